//! Registry access and the digest-exact copy engine.

pub mod acr;
pub mod archive;
pub mod auth;
pub mod client;
pub mod copy;
#[cfg(feature = "aws")]
pub mod ecr;
pub mod error;
pub mod layout;
pub mod manifest;
pub mod reference;
pub mod throughput;

pub use copy::{Access, CopyOptions, CopyReport, Progress, copy};
pub use error::CopyError;
pub use reference::{Digest, Location, RegistryRef, Tag};

/// Blob bytes on their way from a source to a target.
pub type BlobStream = futures_util::stream::BoxStream<'static, Result<bytes::Bytes, std::io::Error>>;
