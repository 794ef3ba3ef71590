//! Account store: loads and holds the credentials of the devices (and
//! operators) allowed to log in, verifies passwords, and produces the SCRAM
//! key material used by [`crate::proto::sasl`].
//!
//! # Accounts file format
//!
//! UTF-8 text, one account per line. Blank lines and lines whose first
//! non-blank character is `#` are ignored. Fields are separated by
//! whitespace:
//!
//! ```text
//! <username> plain:<password>
//! <username> scram:<iterations>:<salt-b64>:<sha1-stored-key-b64>:<sha1-server-key-b64>:<sha256-stored-key-b64>:<sha256-server-key-b64>
//! ```
//!
//! * `username` is normalised to ASCII lower case; it must be non-empty, at
//!   most 1023 bytes, and must not contain whitespace, control characters or
//!   any of `@ / " & ' < > :`. Each username may appear only once.
//! * `plain:` passwords may contain any non-whitespace character, including
//!   `:` and `#`; they must not be empty.
//! * `scram:` lines carry pre-hashed SCRAM credentials (RFC 5802 / RFC 7677)
//!   for both SHA-1 and SHA-256, derived from the same salt and iteration
//!   count: `iterations` is an integer in `1..=100000` ([`MAX_ITERATIONS`]); the salt decodes to
//!   1–128 bytes; the SHA-1 StoredKey/ServerKey decode to 20 bytes each and the
//!   SHA-256 ones to 32 bytes each. Base64 is the standard alphabet, padding
//!   optional. `crbroker hash-password` (see [`hash_line`]) prints such a line.
//! * After the credential, a field starting with `#` begins a trailing
//!   comment (`alice plain:secret  # lab CPE`); any other extra field is an
//!   error.
//!
//! Errors name the file and the 1-based line number. They never contain a
//! password.
//!
//! # Plaintext accounts and SCRAM
//!
//! SCRAM keys for `plain:` accounts are not computed at load time. Their
//! server-first message shows the store's typical parameters (see
//! [`AccountStore::typical_scram`]: the iteration count and salt length of the
//! most common kind of account) and a salt derived with HMAC from a per-process
//! random secret and the username, so every login in the same process sees the
//! same salt. The keys are derived (PBKDF2) when the first proof is checked,
//! never before the challenge, and cached inside the account.
//!
//! # Timing
//!
//! Unknown users get the very same kind of parameters as `plain:` accounts, so
//! a challenge does not tell the kinds apart, and no account kind runs PBKDF2
//! before the challenge. What remains (PBKDF2 for a PLAIN login of a `scram:`
//! account, the first SCRAM proof of a `plain:` account) is hidden by the
//! failure floor of the c2s session (`limits.sasl_failure_floor_ms`), which is
//! why [`MAX_ITERATIONS`] is capped so that its PBKDF2 stays far below that floor.

pub(crate) mod crypto;

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::OnceLock;

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use subtle::ConstantTimeEq;

use crypto::{ScramHash, Sha1Scram, Sha256Scram};

/// Iteration count of the lazily derived SCRAM keys of `plain:` accounts and of
/// the fake parameters of unknown users when the store holds mostly `plain:`
/// accounts (otherwise the most common `scram:` count is used for both).
pub const PLAIN_SCRAM_ITERATIONS: u32 = 4096;
/// Salt length, in bytes, to go with [`PLAIN_SCRAM_ITERATIONS`] (the length
/// `crbroker hash-password` writes).
pub const PLAIN_SCRAM_SALT_LEN: usize = 16;
/// Smallest accepted iteration count in a `scram:` line.
pub const MIN_ITERATIONS: u32 = 1;
/// Largest accepted iteration count in a `scram:` line. One PBKDF2-HMAC-SHA-256
/// at this count takes about 11 ms in the broker on the reference machine (release; see
/// bench/README.md), well under the default SASL failure floor of 200 ms, so a
/// PLAIN login of a `scram:` account fails no later than any other; and no
/// login attempt costs the broker more than one PBKDF2 at this count.
pub const MAX_ITERATIONS: u32 = 100_000;
/// Longest accepted username, in bytes (the XMPP localpart limit).
pub const MAX_USERNAME_LEN: usize = 1023;
/// Longest accepted salt, in bytes (decoded).
pub const MAX_SALT_LEN: usize = 128;

/// Base64 for the accounts file: standard alphabet, padding optional.
const B64_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Errors of the account store.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The accounts file could not be read.
    #[error("cannot read accounts file {path}: {source}")]
    Io {
        /// The file name.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A line of the accounts file is invalid.
    #[error("{origin}:{line}: {problem}")]
    Line {
        /// The file name (as given to [`AccountStore::parse`]).
        origin: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        problem: LineProblem,
    },
    /// An account given directly (e.g. inline in the configuration) is invalid.
    #[error("account {username:?}: {problem}")]
    Account {
        /// The username as given.
        username: String,
        /// What is wrong.
        problem: LineProblem,
    },
}

/// What is wrong with one account definition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineProblem {
    /// The text is not valid UTF-8.
    #[error("invalid UTF-8")]
    InvalidUtf8,
    /// Only a username was given.
    #[error("missing credential: expected `<username> plain:<password>` or `<username> scram:<iterations>:<salt>:<keys…>`")]
    MissingCredential,
    /// More than two fields and the third does not start a `#` comment.
    #[error("unexpected text after the credential (a trailing comment must start with `#`)")]
    TrailingText,
    /// The username is empty.
    #[error("empty username")]
    EmptyUsername,
    /// The username is longer than [`MAX_USERNAME_LEN`] bytes.
    #[error("username longer than {} bytes", MAX_USERNAME_LEN)]
    UsernameTooLong,
    /// The username contains a forbidden character.
    #[error("username contains forbidden character {0:?}")]
    ForbiddenCharacter(char),
    /// The username was already defined (line unknown).
    #[error("duplicate username {0:?}")]
    DuplicateUsername(String),
    /// The username was already defined on an earlier line.
    #[error("duplicate username {username:?} (first defined on line {first_line})")]
    DuplicateUsernameAt {
        /// The normalised username.
        username: String,
        /// 1-based line of the first definition.
        first_line: usize,
    },
    /// The credential does not start with `plain:` or `scram:`.
    #[error("credential must start with `plain:` or `scram:`")]
    UnknownScheme,
    /// `plain:` with nothing after it.
    #[error("empty password")]
    EmptyPassword,
    /// `scram:` is not followed by exactly six `:`-separated fields.
    #[error("`scram:` expects 6 `:`-separated fields (iterations, salt, SHA-1 StoredKey, SHA-1 ServerKey, SHA-256 StoredKey, SHA-256 ServerKey), found {0}")]
    ScramFieldCount(usize),
    /// Iteration count not an integer in range.
    #[error("iteration count {0:?} is not an integer between 1 and 100000")]
    BadIterations(String),
    /// A field is not valid base64.
    #[error("{0} is not valid base64")]
    BadBase64(&'static str),
    /// The salt is empty or too long.
    #[error("salt must decode to 1..={max} bytes, got {0}", max = MAX_SALT_LEN)]
    BadSaltLength(usize),
    /// A key has the wrong length.
    #[error("{field} must decode to {expected} bytes, got {found}")]
    BadKeyLength {
        /// Which key.
        field: &'static str,
        /// Required length.
        expected: usize,
        /// Decoded length.
        found: usize,
    },
}

/// StoredKey and ServerKey of one SCRAM hash function.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct KeyPair<K> {
    pub(crate) stored: K,
    pub(crate) server: K,
}

/// Pre-hashed credentials of a `scram:` account.
pub(crate) struct ScramCredentials {
    iterations: u32,
    salt: Box<[u8]>,
    pub(crate) sha1: KeyPair<[u8; 20]>,
    pub(crate) sha256: KeyPair<[u8; 32]>,
}

/// Lazily derived SCRAM keys of a `plain:` account.
#[derive(Default)]
pub(crate) struct PlainScramCache {
    pub(crate) sha1: OnceLock<Box<KeyPair<[u8; 20]>>>,
    pub(crate) sha256: OnceLock<Box<KeyPair<[u8; 32]>>>,
}

enum Credential {
    Plain {
        password: Box<str>,
        cache: PlainScramCache,
    },
    Scram(Box<ScramCredentials>),
}

/// One account's credentials. `Debug` never shows secrets.
pub struct Account {
    cred: Credential,
}

impl Account {
    fn plain(password: &str) -> Account {
        Account {
            cred: Credential::Plain {
                password: password.into(),
                cache: PlainScramCache::default(),
            },
        }
    }

    /// True for `plain:` accounts (password stored in clear).
    pub fn is_plaintext(&self) -> bool {
        matches!(self.cred, Credential::Plain { .. })
    }

    /// Iteration count of a `scram:` account (`None` for `plain:` ones).
    pub fn scram_iterations(&self) -> Option<u32> {
        match &self.cred {
            Credential::Plain { .. } => None,
            Credential::Scram(c) => Some(c.iterations),
        }
    }

    /// StoredKey and ServerKey for hash `H`: the stored ones of a `scram:`
    /// account; for a `plain:` account derived with `params` (PBKDF2) on first
    /// use and cached. `params` must be what [`AccountStore::scram_params`]
    /// gave for this account.
    pub(crate) fn scram_keys<H: ScramHash>(&self, params: &ScramParams) -> KeyPair<H::Key> {
        match &self.cred {
            Credential::Scram(c) => *H::keys(c),
            Credential::Plain { password, cache } => **H::cache(cache).get_or_init(|| {
                Box::new(crypto::derive_keys::<H>(
                    password.as_bytes(),
                    &params.salt,
                    params.iterations,
                ))
            }),
        }
    }
}

#[cfg(test)]
impl Account {
    /// Whether a `plain:` account's SCRAM keys have been derived (tests: no PBKDF2 before the
    /// proof is checked).
    pub(crate) fn scram_keys_derived(&self) -> bool {
        match &self.cred {
            Credential::Plain { cache, .. } => {
                cache.sha1.get().is_some() || cache.sha256.get().is_some()
            }
            Credential::Scram(_) => true,
        }
    }
}

/// Counts of what a reload changes in the account store ([`AccountStore::diff`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AccountDiff {
    pub added: usize,
    pub removed: usize,
    pub changed: usize,
}

impl Account {
    /// Whether two accounts hold the same credential (the lazily derived SCRAM cache of a
    /// `plain:` account is not part of it).
    fn same_credential(&self, other: &Account) -> bool {
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
            _ => false,
        }
    }
}

/// What a SCRAM server-first message shows: salt and iteration count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ScramParams {
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
        }
    }
}

/// The salt shown for a `plain:` account or an unknown user: `len` bytes of
/// HMAC-SHA-256 output keyed by the per-process secret, over the username.
fn derived_salt(username: &str, len: usize) -> Option<Vec<u8>> {
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

/// Maximum number of distinct (iteration count, salt length) pairs tracked.
const MAX_TRACKED_ITERATION_COUNTS: usize = 32;
/// Salt used by the dummy verification of unknown users.
const DUMMY_SALT: [u8; 16] = *b"crbroker-dummy-s";
/// Password compared against by the dummy verification of unknown users.
const DUMMY_PASSWORD: &[u8] = b"crbroker dummy password for unknown users";

/// All accounts, keyed by normalised (ASCII-lowercase) username.
#[derive(Default)]
pub struct AccountStore {
    accounts: HashMap<Box<str>, Account>,
    plain_count: usize,
    /// Distinct (iteration count, salt length) pairs of `scram:` accounts and
    /// how often each occurs.
    scram_kinds: Vec<((u32, usize), usize)>,
}

impl fmt::Debug for AccountStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccountStore")
            .field("accounts", &self.accounts.len())
            .field("plaintext", &self.plain_count)
            .finish_non_exhaustive()
    }
}

impl AccountStore {
    /// An empty store.
    pub fn new() -> AccountStore {
        AccountStore::default()
    }

    /// Read and parse the accounts file at `path`.
    ///
    /// # Errors
    /// [`AuthError::Io`] if the file cannot be read, [`AuthError::Line`]
    /// (naming the file and the 1-based line) for invalid UTF-8 or an
    /// invalid line.
    pub fn load(path: &Path) -> Result<AccountStore, AuthError> {
        let origin = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| AuthError::Io {
            path: origin.clone(),
            source,
        })?;
        match std::str::from_utf8(&bytes) {
            Ok(text) => AccountStore::parse(text, &origin),
            Err(e) => {
                let prefix = bytes.get(..e.valid_up_to()).unwrap_or_default();
                let line = 1 + prefix.iter().filter(|&&b| b == b'\n').count();
                Err(AuthError::Line {
                    origin,
                    line,
                    problem: LineProblem::InvalidUtf8,
                })
            }
        }
    }

    /// Parse the text of an accounts file; `origin` (the file name) is used
    /// in error messages.
    ///
    /// # Errors
    /// [`AuthError::Line`] for the first invalid line.
    pub fn parse(text: &str, origin: &str) -> Result<AccountStore, AuthError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut store = AccountStore::new();
        let approx_lines = text.as_bytes().iter().filter(|&&b| b == b'\n').count() + 1;
        store.accounts.reserve(approx_lines);
        for (index, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let line_no = index + 1;
            let err = |problem| AuthError::Line {
                origin: origin.to_owned(),
                line: line_no,
                problem,
            };
            let (username, account) = parse_line(line).map_err(err)?;
            if store.accounts.contains_key(&username) {
                let first_line = first_definition(text, &username).unwrap_or(line_no);
                return Err(err(LineProblem::DuplicateUsernameAt {
                    username: username.into(),
                    first_line,
                }));
            }
            store.insert_new(username, account);
        }
        store.accounts.shrink_to_fit();
        Ok(store)
    }

    /// Add a `plain:` account (used for accounts given inline in the
    /// configuration). The username is normalised like in the file.
    ///
    /// # Errors
    /// [`AuthError::Account`] for an invalid or duplicate username or an
    /// empty password.
    pub fn insert_plain(&mut self, username: &str, password: &str) -> Result<(), AuthError> {
        let err = |problem| AuthError::Account {
            username: username.to_owned(),
            problem,
        };
        let name = normalize_username(username).map_err(err)?;
        if password.is_empty() {
            return Err(err(LineProblem::EmptyPassword));
        }
        if self.accounts.contains_key(&name) {
            return Err(err(LineProblem::DuplicateUsername(name.into())));
        }
        self.insert_new(name, Account::plain(password));
        Ok(())
    }

    fn insert_new(&mut self, username: Box<str>, account: Account) {
        match &account.cred {
            Credential::Plain { .. } => self.plain_count += 1,
            Credential::Scram(c) => {
                let kind = (c.iterations, c.salt.len());
                if let Some(entry) = self.scram_kinds.iter_mut().find(|(k, _)| *k == kind) {
                    entry.1 += 1;
                } else if self.scram_kinds.len() < MAX_TRACKED_ITERATION_COUNTS {
                    self.scram_kinds.push((kind, 1));
                }
            }
        }
        self.accounts.insert(username, account);
    }

    /// Number of accounts.
    pub fn len(&self) -> usize {
        self.accounts.len()
    }

    /// True when there are no accounts.
    pub fn is_empty(&self) -> bool {
        self.accounts.is_empty()
    }

    /// How `newer` differs from this store: accounts added, removed, and whose credential
    /// changed (a different password, or the same one stored another way, counts as changed).
    pub fn diff(&self, newer: &AccountStore) -> AccountDiff {
        let mut diff = AccountDiff::default();
        for (name, account) in &self.accounts {
            match newer.accounts.get(name) {
                None => diff.removed += 1,
                Some(other) if !account.same_credential(other) => diff.changed += 1,
                Some(_) => {}
            }
        }
        diff.added = newer
            .accounts
            .keys()
            .filter(|name| !self.accounts.contains_key(*name))
            .count();
        diff
    }

    /// Look an account up; `username` is ASCII-lowercased first.
    pub fn get(&self, username: &str) -> Option<&Account> {
        self.lookup(username).map(|(_, a)| a)
    }

    /// Like [`get`](Self::get) but also returns the normalised username.
    pub(crate) fn lookup(&self, username: &str) -> Option<(&str, &Account)> {
        let key: Cow<'_, str> = if username.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(username.to_ascii_lowercase())
        } else {
            Cow::Borrowed(username)
        };
        self.accounts
            .get_key_value(key.as_ref())
            .map(|(k, a)| (&**k, a))
    }

    /// Iteration count and salt length of the most common kind of account:
    /// the most frequent `scram:` pair if `scram:` accounts with it are at
    /// least as many as `plain:` ones, else ([`PLAIN_SCRAM_ITERATIONS`],
    /// [`PLAIN_SCRAM_SALT_LEN`]). `plain:` accounts and unknown users show
    /// these in SCRAM, so they look like the majority.
    pub(crate) fn typical_scram(&self) -> (u32, usize) {
        self.dominant_scram()
            .unwrap_or((PLAIN_SCRAM_ITERATIONS, PLAIN_SCRAM_SALT_LEN))
    }

    fn dominant_scram(&self) -> Option<(u32, usize)> {
        let (kind, count) = self
            .scram_kinds
            .iter()
            .copied()
            .max_by_key(|&(_, count)| count)?;
        (count >= self.plain_count).then_some(kind)
    }

    /// Salt and iteration count for a SCRAM server-first message, without any
    /// PBKDF2: the stored ones of a `scram:` account; for a `plain:` account
    /// or an unknown user (`account` None) the typical count and a salt of the
    /// typical length derived from `username` (normalised). `None` only when
    /// the OS random source is unavailable.
    pub(crate) fn scram_params(
        &self,
        username: &str,
        account: Option<&Account>,
    ) -> Option<ScramParams> {
        if let Some(Account {
            cred: Credential::Scram(c),
        }) = account
        {
            return Some(ScramParams {
                salt: c.salt.to_vec(),
                iterations: c.iterations,
            });
        }
        let (iterations, salt_len) = self.typical_scram();
        Some(ScramParams {
            salt: derived_salt(username, salt_len)?,
            iterations,
        })
    }

    /// Work equivalent to [`verify_plain`] on a typical account, for PLAIN
    /// logins of unknown users. Always returns `false`.
    pub(crate) fn dummy_verify(&self, password: &[u8]) -> bool {
        match self.dominant_scram() {
            Some((iterations, _)) => {
                let salted = Sha256Scram::salted_password(password, &DUMMY_SALT, iterations);
                let client_key = Sha256Scram::hmac(&salted, &[b"Client Key"]);
                let stored = Sha256Scram::hash(&client_key);
                let _ = std::hint::black_box(stored.ct_eq(&[0u8; 32]));
            }
            None => {
                let digest = Sha256Scram::hash(password);
                let _ = std::hint::black_box(digest.ct_eq(&Sha256Scram::hash(DUMMY_PASSWORD)));
            }
        }
        false
    }
}

/// Find the 1-based line where `username` (normalised) is first defined.
fn first_definition(text: &str, username: &str) -> Option<usize> {
    text.lines().enumerate().find_map(|(index, raw)| {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            return None;
        }
        let first = line.split_whitespace().next()?;
        first.eq_ignore_ascii_case(username).then_some(index + 1)
    })
}

/// Validate and ASCII-lowercase a username (rules of the accounts file).
///
/// # Errors
/// Empty, longer than [`MAX_USERNAME_LEN`], or containing whitespace, a
/// control character or one of `@ / " & ' < > :`.
pub fn normalize_username(username: &str) -> Result<Box<str>, LineProblem> {
    if username.is_empty() {
        return Err(LineProblem::EmptyUsername);
    }
    if username.len() > MAX_USERNAME_LEN {
        return Err(LineProblem::UsernameTooLong);
    }
    if let Some(c) = username.chars().find(|&c| {
        c.is_whitespace()
            || c.is_control()
            || matches!(c, '@' | '/' | '"' | '&' | '\'' | '<' | '>' | ':')
    }) {
        return Err(LineProblem::ForbiddenCharacter(c));
    }
    Ok(username.to_ascii_lowercase().into_boxed_str())
}

fn parse_line(line: &str) -> Result<(Box<str>, Account), LineProblem> {
    let mut fields = line.split_whitespace();
    let username = fields.next().ok_or(LineProblem::EmptyUsername)?;
    let credential = match fields.next() {
        Some(c) if !c.starts_with('#') => c,
        _ => return Err(LineProblem::MissingCredential),
    };
    if let Some(extra) = fields.next() {
        if !extra.starts_with('#') {
            return Err(LineProblem::TrailingText);
        }
    }
    let username = normalize_username(username)?;
    let account = parse_credential(credential)?;
    Ok((username, account))
}

fn parse_credential(credential: &str) -> Result<Account, LineProblem> {
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
/// iterations → ClientKey → StoredKey, compared in constant time.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_counts_added_removed_and_changed_accounts() {
        let old = AccountStore::parse("a plain:x\nb plain:y\nc plain:z\n", "old").unwrap();
        let new =
            AccountStore::parse("a plain:x\nb plain:Y\nd plain:w\ne plain:v\n", "new").unwrap();
        let diff = old.diff(&new);
        assert_eq!(
            (diff.added, diff.removed, diff.changed),
            (2, 1, 1),
            "{diff:?}"
        );
        assert_eq!(old.diff(&old), AccountDiff::default());
        // The same password stored as SCRAM keys is another credential.
        let hashed = AccountStore::parse(&hash_line("a", "x", 4096), "hashed").unwrap();
        let plain_a = AccountStore::parse("a plain:x\n", "plain").unwrap();
        assert_eq!(plain_a.diff(&hashed).changed, 1);
    }

    fn line_err(text: &str) -> (usize, LineProblem) {
        match AccountStore::parse(text, "accounts.txt") {
            Err(AuthError::Line {
                origin,
                line,
                problem,
            }) => {
                assert_eq!(origin, "accounts.txt");
                (line, problem)
            }
            other => panic!("expected a line error, got {other:?}"),
        }
    }

    const GOOD_SCRAM: &str = "scram:4096:QSXCR+Q6sek8bf92:6dlGYMOdZcOPutkcNY8U2g7vK9Y=:D+CSWLOshSulAsxiupA+qs2/fTE=:FO+9jBb3MUukt6jJnzjPZOWc5ow/Pu6JtPyju0aqaE8=:qxJ1SbmSAi5EcS0J5Ck/cKAm/+Ixa+Kwp63f4OHDgzo=";

    #[test]
    fn parses_valid_file() {
        let text = "\u{feff}# comment\n\n  Alice plain:pa:ss#word  \r\nbob\tscram:4096:QSXCR+Q6sek8bf92:6dlGYMOdZcOPutkcNY8U2g7vK9Y=:D+CSWLOshSulAsxiupA+qs2/fTE=:FO+9jBb3MUukt6jJnzjPZOWc5ow/Pu6JtPyju0aqaE8=:qxJ1SbmSAi5EcS0J5Ck/cKAm/+Ixa+Kwp63f4OHDgzo= # trailing comment\n   # indented comment\ncarol plain:x";
        let store = AccountStore::parse(text, "a").unwrap();
        assert_eq!(store.len(), 3);
        assert!(!store.is_empty());
        let alice = store.get("ALICE").unwrap();
        assert!(alice.is_plaintext());
        assert!(verify_plain(alice, b"pa:ss#word"));
        assert!(!verify_plain(alice, b"pa:ss#wor"));
        let bob = store.get("bob").unwrap();
        assert_eq!(bob.scram_iterations(), Some(4096));
        assert!(store.get("dave").is_none());
        assert_eq!(store.lookup("Carol").map(|(k, _)| k), Some("carol"));
        // Debug never shows the password.
        let dbg = format!("{alice:?} {store:?}");
        assert!(!dbg.contains("pa:ss"), "{dbg}");
    }

    #[test]
    fn parse_errors_have_line_numbers() {
        assert_eq!(
            line_err("a plain:x\n\nb\n"),
            (3, LineProblem::MissingCredential)
        );
        assert_eq!(
            line_err("a plain:x # ok\nb plain:y z"),
            (2, LineProblem::TrailingText)
        );
        assert_eq!(line_err("a plain:"), (1, LineProblem::EmptyPassword));
        assert_eq!(line_err("a secret"), (1, LineProblem::UnknownScheme));
        assert_eq!(line_err("a #x"), (1, LineProblem::MissingCredential));
        for (name, c) in [
            ("a@b", '@'),
            ("a/b", '/'),
            ("a\"b", '"'),
            ("a&b", '&'),
            ("a'b", '\''),
            ("a<b", '<'),
            ("a>b", '>'),
            ("a:b", ':'),
            ("a\u{1}b", '\u{1}'),
        ] {
            assert_eq!(
                line_err(&format!("# c\n{name} plain:x")),
                (2, LineProblem::ForbiddenCharacter(c)),
                "{name:?}"
            );
        }
        let long = "u".repeat(MAX_USERNAME_LEN + 1);
        assert_eq!(
            line_err(&format!("{long} plain:x")),
            (1, LineProblem::UsernameTooLong)
        );
        assert_eq!(
            line_err("# x\nAlice plain:x\nbob plain:y\nALICE plain:z"),
            (
                4,
                LineProblem::DuplicateUsernameAt {
                    username: "alice".into(),
                    first_line: 2
                }
            )
        );
    }

    #[test]
    fn scram_line_errors() {
        let parts: Vec<&str> = GOOD_SCRAM.split(':').collect();
        let with = |i: usize, v: &str| {
            let mut p = parts.clone();
            p[i] = v;
            format!("x plain:p\ny {}", p.join(":"))
        };
        assert!(AccountStore::parse(&format!("y {GOOD_SCRAM}"), "f").is_ok());
        assert_eq!(
            line_err("y scram:4096:abc"),
            (1, LineProblem::ScramFieldCount(2))
        );
        assert_eq!(
            line_err(&format!("y {GOOD_SCRAM}:extra")),
            (1, LineProblem::ScramFieldCount(7))
        );
        for bad in ["0", "100001", "1000000", "-1", "abc", "", "99999999999"] {
            assert_eq!(
                line_err(&with(1, bad)).1,
                LineProblem::BadIterations(bad.into()),
                "{bad}"
            );
        }
        assert!(AccountStore::parse(&with(1, "1"), "f").is_ok());
        assert_eq!(
            line_err(&with(2, "!!!!")),
            (2, LineProblem::BadBase64("salt"))
        );
        assert_eq!(line_err(&with(2, "")).1, LineProblem::BadSaltLength(0));
        assert_eq!(
            line_err(&with(2, &"A".repeat(400))).1,
            LineProblem::BadSaltLength(300)
        );
        assert_eq!(
            line_err(&with(3, "AAAA")).1,
            LineProblem::BadKeyLength {
                field: "SHA-1 StoredKey",
                expected: 20,
                found: 3
            }
        );
        assert_eq!(
            line_err(&with(4, "$$")).1,
            LineProblem::BadBase64("SHA-1 ServerKey")
        );
        // A SHA-1-sized key where SHA-256 is required.
        assert_eq!(
            line_err(&with(5, parts[3])).1,
            LineProblem::BadKeyLength {
                field: "SHA-256 StoredKey",
                expected: 32,
                found: 20
            }
        );
        assert_eq!(
            line_err(&with(6, &"QUFB".repeat(30))).1,
            LineProblem::BadKeyLength {
                field: "SHA-256 ServerKey",
                expected: 32,
                found: 90
            }
        );
        // Unpadded base64 is accepted.
        let unpadded = with(3, parts[3].trim_end_matches('='));
        assert!(AccountStore::parse(&unpadded, "f").is_ok());
    }

    #[test]
    fn errors_do_not_leak_passwords() {
        let e = AccountStore::parse("alice hunter2", "f").unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
        assert_eq!(
            e.to_string(),
            "f:1: credential must start with `plain:` or `scram:`"
        );
    }

    #[test]
    fn invalid_utf8_file_reports_line() {
        let dir = std::env::temp_dir().join(format!("crbroker-auth-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("accounts");
        std::fs::write(&path, b"a plain:x\nb plain:\xff\xfe\n").unwrap();
        match AccountStore::load(&path) {
            Err(AuthError::Line { line, problem, .. }) => {
                assert_eq!((line, problem), (2, LineProblem::InvalidUtf8))
            }
            other => panic!("{other:?}"),
        }
        std::fs::write(&path, b"a plain:x\n").unwrap();
        assert_eq!(AccountStore::load(&path).unwrap().len(), 1);
        let missing = dir.join("missing");
        let e = AccountStore::load(&missing).unwrap_err();
        assert!(matches!(e, AuthError::Io { .. }));
        assert!(e.to_string().contains("missing"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn insert_plain_rules() {
        let mut store = AccountStore::parse("alice plain:x", "f").unwrap();
        store.insert_plain("Bob", "pw with spaces").unwrap();
        assert!(verify_plain(store.get("bob").unwrap(), b"pw with spaces"));
        assert!(matches!(
            store.insert_plain("ALICE", "y"),
            Err(AuthError::Account {
                problem: LineProblem::DuplicateUsername(_),
                ..
            })
        ));
        assert!(matches!(
            store.insert_plain("", "y"),
            Err(AuthError::Account {
                problem: LineProblem::EmptyUsername,
                ..
            })
        ));
        assert!(matches!(
            store.insert_plain("c d", "y"),
            Err(AuthError::Account {
                problem: LineProblem::ForbiddenCharacter(' '),
                ..
            })
        ));
        assert!(matches!(
            store.insert_plain("c", ""),
            Err(AuthError::Account {
                problem: LineProblem::EmptyPassword,
                ..
            })
        ));
        assert_eq!(store.len(), 2);
    }

    #[test]
    fn hash_line_round_trip() {
        let line = hash_line("Dev1", "s3cr:et pw", 64);
        assert!(line.starts_with("dev1 scram:64:"), "{line}");
        let store = AccountStore::parse(&line, "f").unwrap();
        let acc = store.get("dev1").unwrap();
        assert!(!acc.is_plaintext());
        assert!(verify_plain(acc, b"s3cr:et pw"));
        assert!(!verify_plain(acc, b"s3cr:et pW"));
        // Salts are random.
        assert_ne!(hash_line("a", "p", 1), hash_line("a", "p", 1));
        // Iterations are clamped into the accepted range.
        assert!(hash_line("a", "p", 0).starts_with("a scram:1:"));
        assert!(AccountStore::parse(&hash_line("a", "p", 0), "f").is_ok());
    }

    #[test]
    fn rfc5802_keys_match_known_line() {
        // GOOD_SCRAM was derived from "pencil" with the RFC 5802 salt.
        let salt = STANDARD.decode("QSXCR+Q6sek8bf92").unwrap();
        assert_eq!(scram_credential(b"pencil", 4096, &salt), GOOD_SCRAM);
    }

    #[test]
    fn plain_account_scram_keys_are_cached_and_stable() {
        let store = AccountStore::parse("alice plain:pencil", "f").unwrap();
        let (name, acc) = store.lookup("alice").unwrap();
        let a = store.scram_params(name, Some(acc)).unwrap();
        assert_eq!(store.scram_params(name, Some(acc)), Some(a.clone()));
        assert_eq!(a.salt.len(), PLAIN_SCRAM_SALT_LEN);
        assert_eq!(a.iterations, PLAIN_SCRAM_ITERATIONS);
        let k = acc.scram_keys::<Sha256Scram>(&a);
        assert!(k == acc.scram_keys::<Sha256Scram>(&a));
        let expected = crypto::derive_keys::<Sha256Scram>(b"pencil", &a.salt, 4096);
        assert!(k == expected);
        // An unknown user's parameters have the same shape, and differ per name.
        let unknown = store.scram_params("mallory", None).unwrap();
        assert_eq!(unknown.iterations, a.iterations);
        assert_eq!(unknown.salt.len(), a.salt.len());
        assert_ne!(unknown.salt, a.salt);
        assert_eq!(store.scram_params("mallory", None), Some(unknown));
    }

    #[test]
    fn typical_parameters_follow_the_majority() {
        let s = |i, salt: &[u8]| scram_credential(b"p", i, salt);
        let text = format!(
            "a {}\nb {}\nc {}\nd plain:x",
            s(10, &[7u8; 24]),
            s(10, &[8u8; 24]),
            s(20, &[7u8; 16])
        );
        let store = AccountStore::parse(&text, "f").unwrap();
        assert_eq!(store.typical_scram(), (10, 24));
        assert!(!store.dummy_verify(b"p"));
        // Plain accounts and unknown users look like the majority.
        let d = store.get("d").unwrap();
        let params = store.scram_params("d", Some(d)).unwrap();
        assert_eq!((params.iterations, params.salt.len()), (10, 24));
        let params = store.scram_params("nobody", None).unwrap();
        assert_eq!((params.iterations, params.salt.len()), (10, 24));
        // A scram account shows its own.
        let c = store.get("c").unwrap();
        let params = store.scram_params("c", Some(c)).unwrap();
        assert_eq!(
            params,
            ScramParams {
                salt: vec![7u8; 16],
                iterations: 20
            }
        );
        let store = AccountStore::parse("a plain:x\nb plain:y", "f").unwrap();
        assert_eq!(store.typical_scram(), (PLAIN_SCRAM_ITERATIONS, 16));
        assert!(!store.dummy_verify(DUMMY_PASSWORD));
        assert_eq!(AccountStore::new().typical_scram(), (4096, 16));
        // Salts longer than one HMAC block are filled.
        assert_eq!(derived_salt("x", 128).unwrap().len(), 128);
    }

    #[test]
    fn store_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<AccountStore>();
        assert_send_sync::<Account>();
        assert_send_sync::<AuthError>();
    }

    #[test]
    fn loads_many_lines() {
        // Debug-build sanity check; see `load_one_million_lines` for timing.
        let text = synthetic_file(20_000);
        let store = AccountStore::parse(&text, "big").unwrap();
        assert_eq!(store.len(), 20_000);
    }

    fn synthetic_file(n: usize) -> String {
        let scram = scram_credential(b"pw", 4096, b"0123456789abcdef");
        let mut text = String::with_capacity(n * 200);
        for i in 0..n {
            if i % 2 == 0 {
                text.push_str(&format!("user{i} plain:password{i}\n"));
            } else {
                text.push_str(&format!("user{i} {scram}\n"));
            }
        }
        text
    }

    /// Run with `cargo test --release -- --ignored load_one_million_lines`.
    #[test]
    #[ignore]
    fn load_one_million_lines() {
        let text = synthetic_file(1_000_000);
        let path = std::env::temp_dir().join(format!("crbroker-1m-{}", std::process::id()));
        std::fs::write(&path, &text).unwrap();
        let start = std::time::Instant::now();
        let store = AccountStore::load(&path).unwrap();
        let elapsed = start.elapsed();
        let _ = std::fs::remove_file(&path);
        assert_eq!(store.len(), 1_000_000);
        eprintln!("loaded 1,000,000 accounts in {elapsed:?}");
        assert!(elapsed < std::time::Duration::from_secs(5), "{elapsed:?}");
    }
}
