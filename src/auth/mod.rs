//! Accounts: who may log in and with which credential. The sources of accounts (the accounts
//! file and inline accounts in [`file`], the others behind
//! [`AccountSource`] in [`source`]: passwords derived from a secret in [`derived`]) each own
//! their accounts; [`account`] holds what one account is and how its password is checked;
//! [`certificate`] reads the usernames a device certificate names (SASL EXTERNAL); the SASL
//! mechanisms in
//! [`crate::proto::sasl`] see accounts only through the [`Credentials`] view.
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

mod account;
mod certificate;
pub(crate) mod crypto;
pub mod derived;
mod file;
pub mod postgres;
mod source;

#[cfg(test)]
pub(crate) use account::scram_credential;
pub(crate) use account::PlainScramCache;
pub use account::ScramParams;
pub(crate) use account::{derived_salt, KeyPair, ScramCredentials};
pub use account::{hash_line, verify_plain, Account};
pub use certificate::{CertificateError, CertificatePolicy};
pub use derived::{DerivedAccounts, DerivedError, DerivedSecret};

/// Check a credential in the accounts file's syntax (`plain:…`, `scram:…`).
///
/// # Errors
/// What is wrong with it, as for a line of the accounts file.
pub fn check_credential(credential: &str) -> Result<(), LineProblem> {
    account::parse_credential(credential).map(drop)
}
pub use file::{AccountDiff, AccountStore};
pub use source::{
    AccountRole, AccountSource, Accounts, Credentials, LoginAccount, ResolveFuture, Resolved,
};

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
    /// A secret of the derived credentials cannot be used.
    #[error(transparent)]
    Derived(#[from] DerivedError),
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

/// Validate and ASCII-lowercase a username (rules of the accounts file).
///
/// # Errors
/// See [`check_username`].
pub fn normalize_username(username: &str) -> Result<Box<str>, LineProblem> {
    check_username(username)?;
    Ok(username.to_ascii_lowercase().into_boxed_str())
}

/// Check a username against the rules of the accounts file, without allocating.
///
/// # Errors
/// Empty, longer than [`MAX_USERNAME_LEN`], or containing whitespace, a
/// control character or one of `@ / " & ' < > :`.
pub fn check_username(username: &str) -> Result<(), LineProblem> {
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
    Ok(())
}
