//! XEP-0114 handshake: the component proves the shared secret with SHA-1(stream id ++ secret).

use sha1::{Digest, Sha1};
use subtle::ConstantTimeEq;

/// The expected `<handshake>` content: lowercase hex SHA-1 of the stream id followed by the secret.
pub fn handshake_digest(stream_id: &str, secret: &str) -> String {
    let mut hasher = Sha1::new();
    hasher.update(stream_id.as_bytes());
    hasher.update(secret.as_bytes());
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Check a received handshake in constant time (case-insensitive hex, surrounding whitespace ignored).
pub fn verify_handshake(received: &str, stream_id: &str, secret: &str) -> bool {
    let expected = handshake_digest(stream_id, secret);
    let received = received.trim().to_ascii_lowercase();
    received.len() == expected.len() && bool::from(received.as_bytes().ct_eq(expected.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xep_0114_example() {
        // Computed independently: python3 -c "import hashlib;print(hashlib.sha1(b'3BF96D32sesame').hexdigest())"
        assert_eq!(
            handshake_digest("3BF96D32", "sesame"),
            "7a98dc4c9e92493d7fd66a25364c862637789c45"
        );
        assert!(verify_handshake(&handshake_digest("abc", "s"), "abc", "s"));
        assert!(!verify_handshake(&handshake_digest("abc", "s"), "abc", "t"));
        assert!(!verify_handshake("", "abc", "s"));
    }
}
