//! Test environment for Ferry's integration tests: real registries as child
//! processes, OCI image layouts written in Rust, a fault-injecting registry
//! proxy, and a runner for the `ferry` binary.
//!
//! Every server listens on 127.0.0.1 on a free port with its own temp dir and
//! is stopped when its handle is dropped, so tests can run in parallel.

// Each integration-test crate uses its own subset of this harness.
#![allow(dead_code, unused_imports)]

pub mod azure;
pub mod browser;
pub mod cli;
pub mod console;
pub mod fault;
pub mod kubernetes;
pub mod lambda;
pub mod layout;
pub mod moto;
pub mod oidc;
pub mod prometheus;
pub mod registry;
pub mod serve;
pub mod terraform;
pub mod tools;

pub use cli::{CopyReport, FerryCommand, FerryRun, ferry, ferry_copy};
pub use fault::{Fault, FaultyProxy};
pub use layout::{Descriptor, Image, ImageIndex, OciLayout, docker_archive_config_digest};
pub use moto::MotoServer;
pub use registry::{Credentials, Manifest, Referrer, Registry, RegistryClient, media_type};
pub use serve::FerryServer;
pub use terraform::TerraformWorkspace;

use sha2::{Digest as _, Sha256};

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Standard base64 (with padding), for docker `config.json` "auth" entries.
pub fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_rfc4648_vectors() {
        assert_eq!(super::base64(b""), "");
        assert_eq!(super::base64(b"f"), "Zg==");
        assert_eq!(super::base64(b"fo"), "Zm8=");
        assert_eq!(super::base64(b"foo"), "Zm9v");
        assert_eq!(super::base64(b"foob"), "Zm9vYg==");
        assert_eq!(super::base64(b"user:pass"), "dXNlcjpwYXNz");
    }
}
