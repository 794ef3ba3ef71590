//! One account's credential: a password kept in clear (`plain:`) with its lazily derived SCRAM
//! keys, pre-hashed SCRAM keys (`scram:`), or several candidate passwords any of which logs in
//! (derived credentials during a secret rotation); the credential syntax shared by every account source
//! (the accounts file, the database), password checks, and the `scram:` line writer.
//!
//! Which accounts exist is the business of the sources ([`super::file`], …); this module only
//! knows what one account holds and how it is checked.

use std::fmt;
use std::sync::OnceLock;

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use subtle::ConstantTimeEq;

use super::crypto::{self, ScramHash, Sha1Scram, Sha256Scram};
use super::{LineProblem, MAX_ITERATIONS, MAX_SALT_LEN, MIN_ITERATIONS};

/// Base64 for stored credentials: standard alphabet, padding optional.
const B64_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// StoredKey and ServerKey of one SCRAM hash function.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct KeyPair<K> {
    pub(crate) stored: K,
    pub(crate) server: K,
}

/// Pre-hashed credentials of a `scram:` account.
pub(crate) struct ScramCredentials {
    pub(crate) iterations: u32,
    pub(crate) salt: Box<[u8]>,
    pub(crate) sha1: KeyPair<[u8; 20]>,
    pub(crate) sha256: KeyPair<[u8; 32]>,
}

/// Lazily derived SCRAM keys of a `plain:` account.
#[derive(Default)]
pub(crate) struct PlainScramCache {
    pub(crate) sha1: OnceLock<Box<KeyPair<[u8; 20]>>>,
    pub(crate) sha256: OnceLock<Box<KeyPair<[u8; 32]>>>,
}

pub(crate) enum Credential {
    Plain {
        password: Box<str>,
        cache: PlainScramCache,
    },
    Scram(Box<ScramCredentials>),
    /// Any of these passwords logs in, tried in order (derived credentials: one per secret,
    /// the current secret's first).
    Candidates(Box<[Candidate]>),
}

/// One password of a [`Credential::Candidates`] account, with its lazily derived SCRAM keys.
pub(crate) struct Candidate {
    password: Box<str>,
    cache: PlainScramCache,
}

/// One account's credentials. `Debug` never shows secrets.
pub struct Account {
    pub(crate) cred: Credential,
}

impl Account {
    pub(crate) fn plain(password: &str) -> Account {
        Account {
            cred: Credential::Plain {
                password: password.into(),
                cache: PlainScramCache::default(),
            },
        }
    }

    /// An account that any of `passwords` logs in to, tried in order (at least one).
    pub(crate) fn candidates(passwords: impl IntoIterator<Item = Box<str>>) -> Account {
        Account {
            cred: Credential::Candidates(
                passwords
                    .into_iter()
                    .map(|password| Candidate {
                        password,
                        cache: PlainScramCache::default(),
                    })
                    .collect(),
            ),
        }
    }

    /// True for accounts whose passwords the broker holds in clear (`plain:` and derived ones).
    pub fn is_plaintext(&self) -> bool {
        !matches!(self.cred, Credential::Scram(_))
    }

    /// Iteration count of a `scram:` account (`None` for the others).
    pub fn scram_iterations(&self) -> Option<u32> {
        match &self.cred {
            Credential::Scram(c) => Some(c.iterations),
            Credential::Plain { .. } | Credential::Candidates(_) => None,
        }
    }

    /// StoredKey and ServerKey for hash `H` of the account's (first) password: the stored ones
    /// of a `scram:` account; for a password in clear derived with `params` (PBKDF2) on first
    /// use and cached. `params` must be what [`AccountStore::scram_params`] gave for this
    /// account.
    #[cfg(test)]
    pub(crate) fn scram_keys<H: ScramHash>(&self, params: &ScramParams) -> KeyPair<H::Key> {
        self.scram_key_candidates::<H>(params)
            .next()
            .unwrap_or_default()
    }

    /// The StoredKey/ServerKey pairs a SCRAM proof may match, in order: one for `plain:` and
    /// `scram:` accounts, one per candidate password of a derived account. Keys of passwords in
    /// clear are derived with `params` (PBKDF2) when the iterator reaches them, then cached, so
    /// a proof that matches the first candidate never pays for the others.
    pub(crate) fn scram_key_candidates<'a, H: ScramHash>(
        &'a self,
        params: &'a ScramParams,
    ) -> impl Iterator<Item = KeyPair<H::Key>> + 'a {
        let (single, candidates): (Option<KeyPair<H::Key>>, &[Candidate]) = match &self.cred {
            Credential::Scram(c) => (Some(*H::keys(c)), &[]),
            Credential::Plain { password, cache } => {
                (Some(cached_keys::<H>(password, cache, params)), &[])
            }
            Credential::Candidates(candidates) => (None, candidates),
        };
        single.into_iter().chain(
            candidates
                .iter()
                .map(move |c| cached_keys::<H>(&c.password, &c.cache, params)),
        )
    }
}

/// The SCRAM keys of a password in clear: derived with `params` (PBKDF2) on first use, then
/// taken from `cache`.
fn cached_keys<H: ScramHash>(
    password: &str,
    cache: &PlainScramCache,
    params: &ScramParams,
) -> KeyPair<H::Key> {
    **H::cache(cache).get_or_init(|| {
        Box::new(crypto::derive_keys::<H>(
            password.as_bytes(),
            &params.salt,
            params.iterations,
        ))
    })
}

#[cfg(test)]
impl Account {
    /// Whether a `plain:` account's SCRAM keys have been derived (tests: no PBKDF2 before the
    /// proof is checked).
    pub(crate) fn scram_keys_derived(&self) -> bool {
        match &self.cred {
            Credential::Plain { cache, .. } => cache_filled(cache),
            Credential::Candidates(candidates) => candidates.iter().any(|c| cache_filled(&c.cache)),
            Credential::Scram(_) => true,
        }
    }

    /// How many candidate passwords have their SCRAM keys derived (tests: a proof that matches
    /// the first candidate does not pay for the others).
    pub(crate) fn candidates_derived(&self) -> usize {
        match &self.cred {
            Credential::Candidates(candidates) => {
                candidates.iter().filter(|c| cache_filled(&c.cache)).count()
            }
            _ => 0,
        }
    }
}

#[cfg(test)]
fn cache_filled(cache: &PlainScramCache) -> bool {
    cache.sha1.get().is_some() || cache.sha256.get().is_some()
}

impl Account {
    /// Whether two accounts hold the same credential (the lazily derived SCRAM cache of a
    /// `plain:` account is not part of it).
    pub(crate) fn same_credential(&self, other: &Account) -> bool {
        match (&self.cred, &other.cred) {
            (Credential::Plain { password: a, .. }, Credential::Plain { password: b, .. }) => {
                a == b
            }
            (Credential::Scram(a), Credential::Scram(b)) => {
                a.iterations == b.iterations
                    && a.salt == b.salt
                    && a.sha1 == b.sha1
                    && a.sha256 == b.sha256
            }
            (Credential::Candidates(a), Credential::Candidates(b)) => {
                a.len() == b.len()
                    && a.iter()
                        .zip(b.iter())
                        .all(|(a, b)| a.password == b.password)
            }
            _ => false,
        }
    }
}

/// What a SCRAM server-first message shows: salt and iteration count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScramParams {
    pub(crate) salt: Vec<u8>,
    pub(crate) iterations: u32,
}

impl fmt::Debug for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.cred {
            Credential::Plain { .. } => f
                .debug_struct("Account")
                .field("kind", &"plain")
                .finish_non_exhaustive(),
            Credential::Scram(c) => f
                .debug_struct("Account")
                .field("kind", &"scram")
                .field("iterations", &c.iterations)
                .finish_non_exhaustive(),
            Credential::Candidates(candidates) => f
                .debug_struct("Account")
                .field("kind", &"derived")
                .field("candidates", &candidates.len())
                .finish_non_exhaustive(),
        }
    }
}

/// The salt shown for a `plain:` account or an unknown user: `len` bytes of
/// HMAC-SHA-256 output keyed by the per-process secret, over the username.
pub(crate) fn derived_salt(username: &str, len: usize) -> Option<Vec<u8>> {
    let secret = crypto::process_secret()?;
    let mut salt = Vec::with_capacity(len);
    let mut block = 0u8;
    while salt.len() < len {
        let out = Sha256Scram::hmac(
            secret,
            &[b"crbroker scram salt\0", &[block], username.as_bytes()],
        );
        let take = (len - salt.len()).min(out.len());
        salt.extend_from_slice(out.get(..take).unwrap_or_default());
        block = block.wrapping_add(1);
    }
    Some(salt)
}

pub(crate) fn parse_credential(credential: &str) -> Result<Account, LineProblem> {
    if let Some(password) = credential.strip_prefix("plain:") {
        if password.is_empty() {
            return Err(LineProblem::EmptyPassword);
        }
        Ok(Account::plain(password))
    } else if let Some(rest) = credential.strip_prefix("scram:") {
        Ok(Account {
            cred: Credential::Scram(Box::new(parse_scram(rest)?)),
        })
    } else {
        Err(LineProblem::UnknownScheme)
    }
}

fn parse_scram(rest: &str) -> Result<ScramCredentials, LineProblem> {
    let mut fields = [""; 6];
    let mut count = 0usize;
    for part in rest.split(':') {
        if let Some(slot) = fields.get_mut(count) {
            *slot = part;
        }
        count += 1;
    }
    if count != fields.len() {
        return Err(LineProblem::ScramFieldCount(count));
    }
    let [iterations, salt, sha1_stored, sha1_server, sha256_stored, sha256_server] = fields;

    let iterations = iterations
        .parse::<u32>()
        .ok()
        .filter(|i| (MIN_ITERATIONS..=MAX_ITERATIONS).contains(i))
        .ok_or_else(|| LineProblem::BadIterations(iterations.chars().take(24).collect()))?;

    // 4 base64 chars per 3 bytes, plus slack for padding.
    if salt.len() > MAX_SALT_LEN.div_ceil(3) * 4 + 4 {
        return Err(LineProblem::BadSaltLength(salt.len() / 4 * 3));
    }
    let salt = B64_LENIENT
        .decode(salt)
        .map_err(|_| LineProblem::BadBase64("salt"))?;
    if salt.is_empty() || salt.len() > MAX_SALT_LEN {
        return Err(LineProblem::BadSaltLength(salt.len()));
    }

    Ok(ScramCredentials {
        iterations,
        salt: salt.into_boxed_slice(),
        sha1: KeyPair {
            stored: decode_key(sha1_stored, "SHA-1 StoredKey")?,
            server: decode_key(sha1_server, "SHA-1 ServerKey")?,
        },
        sha256: KeyPair {
            stored: decode_key(sha256_stored, "SHA-256 StoredKey")?,
            server: decode_key(sha256_server, "SHA-256 ServerKey")?,
        },
    })
}

/// Decode a base64 key of exactly `N` bytes without heap allocation.
fn decode_key<const N: usize>(text: &str, field: &'static str) -> Result<[u8; N], LineProblem> {
    // Large enough for the decode estimate of any input of up to 64 chars.
    let mut buf = [0u8; 48];
    let decoded_len = if text.len() <= 64 {
        B64_LENIENT
            .decode_slice(text, &mut buf)
            .map_err(|_| LineProblem::BadBase64(field))?
    } else {
        // Error path only: find out how long it really is.
        B64_LENIENT
            .decode(text)
            .map_err(|_| LineProblem::BadBase64(field))?
            .len()
    };
    let wrong_length = LineProblem::BadKeyLength {
        field,
        expected: N,
        found: decoded_len,
    };
    if decoded_len != N {
        return Err(wrong_length);
    }
    buf.get(..N)
        .and_then(|s| <[u8; N]>::try_from(s).ok())
        .ok_or(wrong_length)
}

/// Check `password` against `account`: constant-time comparison for `plain:`
/// accounts; for `scram:` accounts PBKDF2-SHA-256 with the stored salt and
/// iterations → ClientKey → StoredKey, compared in constant time; for derived accounts a
/// constant-time comparison with every candidate (no early exit).
pub fn verify_plain(account: &Account, password: &[u8]) -> bool {
    match &account.cred {
        Credential::Plain {
            password: stored, ..
        } => {
            // Compare digests so that the comparison does not reveal the length.
            Sha256Scram::hash(stored.as_bytes())
                .ct_eq(&Sha256Scram::hash(password))
                .into()
        }
        Credential::Candidates(candidates) => {
            let given = Sha256Scram::hash(password);
            candidates
                .iter()
                .fold(subtle::Choice::from(0), |matched, c| {
                    matched | Sha256Scram::hash(c.password.as_bytes()).ct_eq(&given)
                })
                .into()
        }
        Credential::Scram(c) => {
            let salted = Sha256Scram::salted_password(password, &c.salt, c.iterations);
            let client_key = Sha256Scram::hmac(&salted, &[b"Client Key"]);
            let stored = Sha256Scram::hash(&client_key);
            stored.ct_eq(&c.sha256.stored).into()
        }
    }
}

/// Produce an accounts-file line `<username> scram:…` for `password`, with a
/// random 16-byte salt. `iterations` is clamped to
/// `MIN_ITERATIONS..=MAX_ITERATIONS`; `username` is ASCII-lowercased but not
/// otherwise validated (use [`normalize_username`] first to reject bad names).
pub fn hash_line(username: &str, password: &str, iterations: u32) -> String {
    let iterations = iterations.clamp(MIN_ITERATIONS, MAX_ITERATIONS);
    let mut salt = [0u8; 16];
    if crypto::random_bytes(&mut salt).is_err() {
        salt = fallback_salt(username);
    }
    format!(
        "{} {}",
        username.to_ascii_lowercase(),
        scram_credential(password.as_bytes(), iterations, &salt)
    )
}

/// The `scram:…` credential field for `password` with the given parameters.
pub(crate) fn scram_credential(password: &[u8], iterations: u32, salt: &[u8]) -> String {
    let sha1 = crypto::derive_keys::<Sha1Scram>(password, salt, iterations);
    let sha256 = crypto::derive_keys::<Sha256Scram>(password, salt, iterations);
    format!(
        "scram:{}:{}:{}:{}:{}:{}",
        iterations,
        STANDARD.encode(salt),
        STANDARD.encode(sha1.stored),
        STANDARD.encode(sha1.server),
        STANDARD.encode(sha256.stored),
        STANDARD.encode(sha256.server),
    )
}

/// Unique-enough salt when the OS random source fails (salts need to be
/// unique, not secret).
fn fallback_salt(username: &str) -> [u8; 16] {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let counter = COUNTER.fetch_add(1, Ordering::Relaxed);
    let seed = format!(
        "{nanos}:{counter}:{}:{:p}:{username}",
        std::process::id(),
        &counter
    );
    crypto::prf(b"crbroker fallback salt", b"salt", seed.as_bytes())
}
