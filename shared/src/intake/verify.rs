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

/// Ferry's generic signature: hex HMAC-SHA256 over `"{timestamp}.{body}"`, optionally
/// `sha256=`-prefixed (either case), hex in either case.
pub fn generic_signature_valid(secret: &[u8], timestamp: &str, body: &[u8], header: &str) -> bool {
    generic_signature_mac(secret, timestamp, body, header).is_some()
}

/// The decoded MAC of a valid generic signature: what the replay guard remembers, so that one
/// signature spelled differently (prefix, case) is still one signature.
pub fn generic_signature_mac(secret: &[u8], timestamp: &str, body: &[u8], header: &str) -> Option<Vec<u8>> {
    let hex_sig = header.trim();
    let hex_sig = match hex_sig.get(..7) {
        Some(prefix) if prefix.eq_ignore_ascii_case("sha256=") => &hex_sig[7..],
        _ => hex_sig,
    };
    let signature = hex::decode(hex_sig).ok()?;
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&signature).is_ok().then_some(signature)
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
    fn every_spelling_of_one_generic_signature_decodes_to_the_same_mac() {
        let sig = generic_signature(b"s", "1700000000", b"{}");
        let hex = sig.trim_start_matches("sha256=");
        let mac = generic_signature_mac(b"s", "1700000000", b"{}", &sig).unwrap();
        for spelling in
            [hex.to_string(), hex.to_uppercase(), format!("SHA256={hex}"), format!("sha256={}", hex.to_uppercase())]
        {
            assert_eq!(generic_signature_mac(b"s", "1700000000", b"{}", &spelling).as_ref(), Some(&mac), "{spelling}");
        }
    }

    #[test]
    fn secret_comparison() {
        assert!(secrets_equal(b"abc", b"abc"));
        assert!(!secrets_equal(b"abc", b"abd"));
        assert!(!secrets_equal(b"abc", b"abcd"));
    }
}
