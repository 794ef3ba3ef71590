//! The accounts file and the accounts given inline in the configuration: a read-only store
//! loaded at start and swapped whole by a reload.
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
//!   count: `iterations` is an integer in `1..=100000` ([`super::MAX_ITERATIONS`]); the salt
//!   decodes to 1–128 bytes; the SHA-1 StoredKey/ServerKey decode to 20 bytes each and the
//!   SHA-256 ones to 32 bytes each. Base64 is the standard alphabet, padding
//!   optional. `crbroker hash-password` (see [`super::hash_line`]) prints such a line.
//! * After the credential, a field starting with `#` begins a trailing
//!   comment (`alice plain:secret  # lab CPE`); any other extra field is an
//!   error.
//!
//! Errors name the file and the 1-based line number. They never contain a
//! password.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use subtle::ConstantTimeEq;

use super::account::{parse_credential, Credential};
use super::crypto::{ScramHash, Sha256Scram};
use super::{
    derived_salt, normalize_username, Account, AuthError, LineProblem, ScramParams,
    PLAIN_SCRAM_ITERATIONS, PLAIN_SCRAM_SALT_LEN,
};

/// Counts of what a reload changes in the account store ([`AccountStore::diff`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AccountDiff {
    pub added: usize,
    pub removed: usize,
    pub changed: usize,
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

    /// The `(username, credential)` fields of each account line of an accounts file's text, as
    /// written (usernames not normalised); blank, comment and invalid lines are skipped, so
    /// check the text with [`AccountStore::parse`] first (`crbroker db import` does).
    pub fn lines(text: &str) -> impl Iterator<Item = (&str, &str)> {
        text.strip_prefix('\u{feff}')
            .unwrap_or(text)
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .filter_map(|line| split_line(line).ok())
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
            // Derived accounts never come from the file; counted like the passwords in clear
            // they are.
            Credential::Plain { .. } | Credential::Candidates(_) => self.plain_count += 1,
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

fn parse_line(line: &str) -> Result<(Box<str>, Account), LineProblem> {
    let (username, credential) = split_line(line)?;
    let username = normalize_username(username)?;
    let account = parse_credential(credential)?;
    Ok((username, account))
}

/// The username and credential fields of an account line (trimmed, not a comment).
fn split_line(line: &str) -> Result<(&str, &str), LineProblem> {
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
    Ok((username, credential))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::crypto;
    use crate::auth::{hash_line, scram_credential, verify_plain, MAX_USERNAME_LEN};
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;

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
