//! SCRAM key derivation and HMAC/hash primitives (RFC 5802 §3), shared by the
//! account store ([`crate::auth`]) and the SASL mechanisms
//! ([`crate::proto::sasl`]).
//!
//! Everything here is infallible: the underlying `KeyInit::new_from_slice`
//! calls cannot fail for HMAC (any key length is valid), and the never-taken
//! error branches fall back to a zero key instead of panicking.

use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use std::sync::OnceLock;

use super::{KeyPair, PlainScramCache, ScramCredentials};

/// A hash function usable for SCRAM-SHA-*.
pub(crate) trait ScramHash: 'static {
    /// Fixed-size key / digest type (`[u8; 20]` or `[u8; 32]`).
    type Key: Copy + Default + AsRef<[u8]> + AsMut<[u8]> + Send + Sync + 'static;

    /// `HMAC(key, parts[0] || parts[1] || ...)`.
    fn hmac(key: &[u8], parts: &[&[u8]]) -> Self::Key;
    /// `H(data)`.
    fn hash(data: &[u8]) -> Self::Key;
    /// `Hi(password, salt, iterations)` = PBKDF2-HMAC.
    fn salted_password(password: &[u8], salt: &[u8], iterations: u32) -> Self::Key;
    /// The stored keys of a `scram:` account for this hash.
    fn keys(creds: &ScramCredentials) -> &KeyPair<Self::Key>;
    /// The lazily filled cache of a `plain:` account for this hash.
    fn cache(cache: &PlainScramCache) -> &OnceLock<Box<KeyPair<Self::Key>>>;
}

/// SHA-1 (SCRAM-SHA-1).
pub(crate) struct Sha1Scram;
/// SHA-256 (SCRAM-SHA-256).
pub(crate) struct Sha256Scram;

macro_rules! impl_scram_hash {
    ($ty:ty, $digest:ty, $len:expr, $field:ident) => {
        impl ScramHash for $ty {
            type Key = [u8; $len];

            fn hmac(key: &[u8], parts: &[&[u8]]) -> Self::Key {
                let mut mac = <Hmac<$digest> as KeyInit>::new_from_slice(key)
                    .unwrap_or_else(|_| <Hmac<$digest> as KeyInit>::new(&Default::default()));
                for part in parts {
                    mac.update(part);
                }
                mac.finalize().into_bytes().into()
            }

            fn hash(data: &[u8]) -> Self::Key {
                <$digest>::digest(data).into()
            }

            fn salted_password(password: &[u8], salt: &[u8], iterations: u32) -> Self::Key {
                let mut out = [0u8; $len];
                if pbkdf2::pbkdf2::<Hmac<$digest>>(password, salt, iterations, &mut out).is_err() {
                    // Unreachable (HMAC accepts any key length); never leave a
                    // predictable all-zero result that could match anything.
                    out = Self::hash(&[password, salt].concat());
                }
                out
            }

            fn keys(creds: &ScramCredentials) -> &KeyPair<Self::Key> {
                &creds.$field
            }

            fn cache(cache: &PlainScramCache) -> &OnceLock<Box<KeyPair<Self::Key>>> {
                &cache.$field
            }
        }
    };
}

impl_scram_hash!(Sha1Scram, Sha1, 20, sha1);
impl_scram_hash!(Sha256Scram, Sha256, 32, sha256);

/// RFC 5802: `SaltedPassword → ClientKey → StoredKey`, `ServerKey`.
pub(crate) fn derive_keys<H: ScramHash>(
    password: &[u8],
    salt: &[u8],
    iterations: u32,
) -> KeyPair<H::Key> {
    let salted = H::salted_password(password, salt, iterations);
    keys_from_salted::<H>(salted.as_ref())
}

/// `ClientKey = HMAC(SaltedPassword, "Client Key")`, `StoredKey = H(ClientKey)`,
/// `ServerKey = HMAC(SaltedPassword, "Server Key")`.
pub(crate) fn keys_from_salted<H: ScramHash>(salted: &[u8]) -> KeyPair<H::Key> {
    let client_key = H::hmac(salted, &[b"Client Key"]);
    KeyPair {
        stored: H::hash(client_key.as_ref()),
        server: H::hmac(salted, &[b"Server Key"]),
    }
}

/// HMAC-SHA-256 truncated/expanded to `N` bytes (N ≤ 32), used to derive
/// deterministic pseudo-random values (fake salts, fake keys).
pub(crate) fn prf<const N: usize>(secret: &[u8], label: &[u8], data: &[u8]) -> [u8; N] {
    let full = Sha256Scram::hmac(secret, &[label, b"\0", data]);
    let mut out = [0u8; N];
    for (o, f) in out.iter_mut().zip(full.iter()) {
        *o = *f;
    }
    out
}

/// Fill `buf` with OS randomness.
pub(crate) fn random_bytes(buf: &mut [u8]) -> Result<(), getrandom::Error> {
    getrandom::getrandom(buf)
}

/// Per-process random secret (used to derive the SCRAM salt of `plain:`
/// accounts). `None` only if the OS random source is unavailable.
pub(crate) fn process_secret() -> Option<&'static [u8; 32]> {
    static SECRET: OnceLock<[u8; 32]> = OnceLock::new();
    if let Some(s) = SECRET.get() {
        return Some(s);
    }
    let mut buf = [0u8; 32];
    random_bytes(&mut buf).ok()?;
    // If another thread won the race, its value is kept and returned.
    let _ = SECRET.set(buf);
    SECRET.get()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pbkdf2_sha1_rfc6070() {
        // RFC 6070 test vector 2.
        let out = Sha1Scram::salted_password(b"password", b"salt", 2);
        assert_eq!(
            out,
            [
                0xea, 0x6c, 0x01, 0x4d, 0xc7, 0x2d, 0x6f, 0x8c, 0xcd, 0x1e, 0xd9, 0x2a, 0xce, 0x1d,
                0x41, 0xf0, 0xd8, 0xde, 0x89, 0x57
            ]
        );
    }

    #[test]
    fn prf_is_deterministic_and_keyed() {
        let a: [u8; 16] = prf(b"k1", b"label", b"alice");
        let b: [u8; 16] = prf(b"k1", b"label", b"alice");
        let c: [u8; 16] = prf(b"k2", b"label", b"alice");
        let d: [u8; 16] = prf(b"k1", b"other", b"alice");
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
    }

    #[test]
    fn process_secret_is_stable() {
        let a = process_secret().copied();
        let b = process_secret().copied();
        assert!(a.is_some());
        assert_eq!(a, b);
    }
}
