//! Sender authentication on the raw request, before any parsing: HMAC signatures, shared
//! secrets in a header, basic auth, URL tokens. Every comparison is constant-time.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// Constant-time equality of two secrets (the lengths may leak, the contents do not).
pub fn secrets_equal(given: &[u8], expected: &[u8]) -> bool {
    given.ct_eq(expected).into()
}

/// `sha256=<hex>` over `body` keyed by `secret`, as GitHub sends in `X-Hub-Signature-256`.
pub fn github_signature_valid(secret: &[u8], body: &[u8], header: &str) -> bool {
    let Some(hex_sig) = header.trim().strip_prefix("sha256=") else {
        return false;
    };
    let Ok(signature) = hex::decode(hex_sig) else {
        return false;
    };
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(body);
    mac.verify_slice(&signature).is_ok()
}

/// Ferry's generic signature: hex HMAC-SHA256 over `"{timestamp}.{body}"`, optionally `sha256=`-prefixed.
pub fn generic_signature_valid(secret: &[u8], timestamp: &str, body: &[u8], header: &str) -> bool {
    let hex_sig = header.trim();
    let hex_sig = hex_sig.strip_prefix("sha256=").unwrap_or(hex_sig);
    let Ok(signature) = hex::decode(hex_sig) else {
        return false;
    };
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&signature).is_ok()
}

/// Signs like a generic sender does (for clients, tests and benchmarks).
pub fn generic_signature(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn githubs_published_test_vector_verifies() {
        let header = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert!(github_signature_valid(b"It's a Secret to Everybody", b"Hello, World!", header));
        assert!(!github_signature_valid(b"It's a Secret to Everybody", b"Hello, World?", header));
        assert!(!github_signature_valid(b"wrong", b"Hello, World!", header));
        assert!(!github_signature_valid(b"k", b"b", "sha1=abcd"));
        assert!(!github_signature_valid(b"k", b"b", "sha256=not-hex"));
    }

    #[test]
    fn generic_signature_binds_timestamp_and_body() {
        let sig = generic_signature(b"s", "1700000000", b"{}");
        assert!(generic_signature_valid(b"s", "1700000000", b"{}", &sig));
        assert!(generic_signature_valid(b"s", "1700000000", b"{}", sig.trim_start_matches("sha256=")));
        assert!(!generic_signature_valid(b"s", "1700000001", b"{}", &sig));
        assert!(!generic_signature_valid(b"s", "1700000000", b"{ }", &sig));
    }

    #[test]
    fn secret_comparison() {
        assert!(secrets_equal(b"abc", b"abc"));
        assert!(!secrets_equal(b"abc", b"abd"));
        assert!(!secrets_equal(b"abc", b"abcd"));
    }
}
