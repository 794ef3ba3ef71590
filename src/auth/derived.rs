//! Derived credentials (`[accounts.derived]`): no store at all. A CPE's password is a function
//! of a secret the broker and the ACS share and of the CPE's username; the ACS computes it when
//! it provisions the CPE, the broker computes it again at login.
//!
//! # The function
//!
//! ```text
//! password = base64url_nopad( HMAC-SHA-256( key = secret, message = lowercase(username) ) )
//! ```
//!
//! * `secret` is the content of the secret file with trailing line feeds and carriage returns
//!   removed (so `openssl rand -hex 32 > FILE` gives a 64-byte secret), at least
//!   [`MIN_SECRET_LEN`] bytes;
//! * `lowercase` is ASCII lower case (usernames are case-insensitive, as in the accounts file);
//! * `base64url_nopad` is RFC 4648 §5 (`A-Z a-z 0-9 - _`) without `=` padding.
//!
//! The password is [`PASSWORD_LEN`] (43) characters and carries the 256 bits of the HMAC: it
//! cannot be guessed, and one CPE's password tells nothing about another's or about the secret.
//! `crbroker derive-password USER` prints it; README "Derived credentials" shows the same with
//! `openssl` and in a GenieACS extension (contrib/genieacs/derive-xmpp-password.js).
//!
//! # Which usernames
//!
//! Only usernames that start with one of `username_prefixes` (and have at least one character
//! after it) are derived accounts; the prefixes are required so that a secret never covers ACS
//! accounts or anything else by accident. The accounts file is asked first: an account there
//! wins over a derived one.
//!
//! # Rotation
//!
//! Several secrets can be configured, each with an id, the current one first: a login is
//! accepted with the password of any of them (PLAIN compares with each in constant time; SCRAM
//! checks the proof against each candidate's keys in order). `derive-password` uses the first.
//! A rotation: add the new secret first and keep the old one, reload, re-provision the CPEs,
//! then drop the old one and reload again.
//!
//! # Cache
//!
//! [`DerivedAccounts`] keeps the account of each username it answered (its candidate passwords
//! and, once a SCRAM login needed them, their PBKDF2-derived SCRAM keys) in a bounded map of two
//! generations, so that a reconnecting CPE does not pay PBKDF2 again. A reload that changes the
//! secrets builds a new source: nothing derived from a removed secret survives.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

use super::crypto::{ScramHash, Sha256Scram};
use super::source::{AccountSource, ResolveFuture, Resolved};
use super::{check_username, Account};

/// Most secrets at once: a rotation needs two; each one costs a PBKDF2 at the first SCRAM login
/// of a CPE whose password matches none of the earlier ones, or that fails.
pub const MAX_SECRETS: usize = 4;
/// Shortest accepted secret, in bytes (256 bits when the bytes are random).
pub const MIN_SECRET_LEN: usize = 32;
/// Length of a derived password: 32 bytes of HMAC-SHA-256 in unpadded base64url.
pub const PASSWORD_LEN: usize = 43;
/// Default bound of the account cache (`accounts.derived.cache_entries`).
pub const DEFAULT_CACHE_ENTRIES: usize = 100_000;

/// A secret that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DerivedError {
    /// The secret file cannot be read.
    #[error("accounts.derived secret {id:?}: cannot read {path}: {source}")]
    Io {
        /// The secret's id.
        id: String,
        /// The file name.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The secret is too short.
    #[error(
        "accounts.derived secret {id:?}: {path} holds {len} bytes (trailing newlines removed); \
         at least {MIN_SECRET_LEN} are needed (e.g. `openssl rand -hex 32 > {path}`)"
    )]
    TooShort {
        /// The secret's id.
        id: String,
        /// The file name (`-` when the secret was given directly).
        path: String,
        /// Bytes found.
        len: usize,
    },
}

/// One secret with its id. `Debug` shows the id only.
pub struct DerivedSecret {
    id: Box<str>,
    key: Box<[u8]>,
}

impl fmt::Debug for DerivedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DerivedSecret")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl DerivedSecret {
    /// A secret from its bytes (as they are: nothing trimmed).
    ///
    /// # Errors
    /// [`DerivedError::TooShort`] below [`MIN_SECRET_LEN`] bytes.
    pub fn new(id: &str, key: &[u8]) -> Result<DerivedSecret, DerivedError> {
        DerivedSecret::checked(id, key, "-")
    }

    fn checked(id: &str, key: &[u8], path: &str) -> Result<DerivedSecret, DerivedError> {
        if key.len() < MIN_SECRET_LEN {
            return Err(DerivedError::TooShort {
                id: id.into(),
                path: path.into(),
                len: key.len(),
            });
        }
        Ok(DerivedSecret {
            id: id.into(),
            key: key.into(),
        })
    }

    /// Read a secret file: its bytes without trailing `\n` and `\r`. Warns (log) when the file
    /// is readable by its group or by others: only the broker (and whoever provisions CPEs)
    /// should read it.
    ///
    /// # Errors
    /// [`DerivedError::Io`] when it cannot be read, [`DerivedError::TooShort`].
    pub fn load(id: &str, path: &Path) -> Result<DerivedSecret, DerivedError> {
        let shown = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| DerivedError::Io {
            id: id.into(),
            path: shown.clone(),
            source,
        })?;
        warn_if_shared(id, path);
        let end = bytes
            .iter()
            .rposition(|b| !matches!(b, b'\n' | b'\r'))
            .map_or(0, |i| i + 1);
        DerivedSecret::checked(id, bytes.get(..end).unwrap_or_default(), &shown)
    }

    /// The secret's id (`accounts.derived.secrets[].id`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The password of `username` under this secret (the username is ASCII-lowercased first).
    pub fn password(&self, username: &str) -> String {
        self.password_of_normalised(&username.to_ascii_lowercase())
    }

    fn password_of_normalised(&self, username: &str) -> String {
        URL_SAFE_NO_PAD.encode(Sha256Scram::hmac(&self.key, &[username.as_bytes()]))
    }
}

#[cfg(unix)]
fn warn_if_shared(id: &str, path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                secret = id,
                file = %path.display(),
                "the derived-credentials secret file is readable by its group or others; \
                 `chmod 600` it (anyone who reads it can log in as any derived account)"
            );
        }
    }
}

#[cfg(not(unix))]
fn warn_if_shared(_id: &str, _path: &Path) {}

/// The derived-credentials account source: the secrets, the qualifying prefixes and the bounded
/// cache of accounts.
pub struct DerivedAccounts {
    secrets: Box<[DerivedSecret]>,
    prefixes: Box<[Box<str>]>,
    cache: AccountCache,
}

impl fmt::Debug for DerivedAccounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DerivedAccounts")
            .field("secrets", &self.secrets)
            .field("prefixes", &self.prefixes)
            .field("cached", &self.cache.len())
            .finish()
    }
}

impl DerivedAccounts {
    /// A source for `secrets` (the current one first; at least one) and the usernames starting
    /// with one of `prefixes` (ASCII-lowercased here), caching at most `cache_entries` accounts
    /// (at least 2).
    pub fn new<'p>(
        secrets: Vec<DerivedSecret>,
        prefixes: impl IntoIterator<Item = &'p str>,
        cache_entries: usize,
    ) -> DerivedAccounts {
        DerivedAccounts {
            secrets: secrets.into_boxed_slice(),
            prefixes: prefixes
                .into_iter()
                .map(|p| p.to_ascii_lowercase().into_boxed_str())
                .collect(),
            cache: AccountCache::new(cache_entries),
        }
    }

    /// The secrets, the current one first.
    pub fn secrets(&self) -> &[DerivedSecret] {
        &self.secrets
    }

    /// Whether `username` (normalised) is a derived account: a valid username that starts with
    /// one of the prefixes and is longer than it.
    pub fn qualifies(&self, username: &str) -> bool {
        check_username(username).is_ok()
            && self
                .prefixes
                .iter()
                .any(|p| username.len() > p.len() && username.starts_with(&**p))
    }

    /// The account of `username` (normalised), from the cache or made now (one HMAC per
    /// secret, no PBKDF2); `None` when it does not qualify.
    pub fn account(&self, username: &str) -> Option<Arc<Account>> {
        if !self.qualifies(username) {
            return None;
        }
        Some(self.cache.get_or_insert_with(username, || {
            Account::candidates(
                self.secrets
                    .iter()
                    .map(|s| s.password_of_normalised(username).into_boxed_str()),
            )
        }))
    }

    /// Accounts in the cache now.
    pub fn cached(&self) -> usize {
        self.cache.len()
    }

    /// Whether `other` has the same secrets (ids and bytes, in order), prefixes and cache
    /// bound: then a reload keeps this source and its cache.
    pub fn same_settings(&self, other: &DerivedAccounts) -> bool {
        self.prefixes == other.prefixes
            && self.cache.capacity() == other.cache.capacity()
            && self.secrets.len() == other.secrets.len()
            && self
                .secrets
                .iter()
                .zip(other.secrets.iter())
                .all(|(a, b)| a.id == b.id && a.key == b.key)
    }
}

impl AccountSource for DerivedAccounts {
    fn kind(&self) -> &'static str {
        "derived"
    }

    fn resolve<'a>(&'a self, username: &'a str) -> ResolveFuture<'a> {
        let resolved = match self.account(username) {
            Some(account) => Resolved::Found {
                account,
                role: None,
            },
            None => Resolved::Unknown,
        };
        Box::pin(std::future::ready(resolved))
    }

    fn may_exist(&self, username: &str) -> bool {
        self.qualifies(username)
    }
}

/// Accounts by username, at most `2 * generation` of them: inserts go into `current`; when it
/// is full it becomes `previous` and the old `previous` is dropped whole (O(1) forgetting, no
/// scan). A hit in `previous` moves the account back into `current`, so CPEs that log in again
/// survive, and a flood of new names evicts at most the accounts not used for a generation.
/// The critical sections are map operations only (no hashing of secrets, no PBKDF2), under a
/// std mutex never held across an await.
struct AccountCache {
    generation: usize,
    maps: Mutex<Generations>,
}

#[derive(Default)]
struct Generations {
    current: HashMap<Box<str>, Arc<Account>>,
    previous: HashMap<Box<str>, Arc<Account>>,
}

impl Generations {
    fn insert(&mut self, generation: usize, username: Box<str>, account: Arc<Account>) {
        if self.current.len() >= generation {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert(username, account);
    }
}

impl AccountCache {
    /// A cache of at most `entries` accounts (rounded down to even, at least 2).
    fn new(entries: usize) -> AccountCache {
        AccountCache {
            generation: (entries / 2).max(1),
            maps: Mutex::default(),
        }
    }

    fn capacity(&self) -> usize {
        self.generation * 2
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Generations> {
        // Map operations leave the maps whole even if a thread panicked while holding the lock.
        self.maps.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn len(&self) -> usize {
        let maps = self.lock();
        maps.current.len() + maps.previous.len()
    }

    fn get_or_insert_with(&self, username: &str, make: impl FnOnce() -> Account) -> Arc<Account> {
        {
            let mut maps = self.lock();
            if let Some(account) = maps.current.get(username) {
                return account.clone();
            }
            if let Some((name, account)) = maps.previous.remove_entry(username) {
                maps.insert(self.generation, name, account.clone());
                return account;
            }
        }
        // Made outside the lock (an HMAC per secret).
        let made = Arc::new(make());
        let mut maps = self.lock();
        // Two logins of the same CPE at once share one account (and its SCRAM keys).
        if let Some(account) = maps.current.get(username) {
            return account.clone();
        }
        maps.insert(self.generation, username.into(), made.clone());
        made
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::crypto::Sha1Scram;
    use crate::auth::{verify_plain, ScramParams};

    fn secret(id: &str, fill: u8) -> DerivedSecret {
        DerivedSecret::new(id, &[fill; 32]).unwrap()
    }

    fn source(secrets: Vec<DerivedSecret>, entries: usize) -> DerivedAccounts {
        DerivedAccounts::new(secrets, ["cpe-", "Lab-"], entries)
    }

    #[test]
    fn password_is_base64url_of_hmac_sha256_of_the_lowercase_username() {
        // RFC 4231 test case 2: HMAC-SHA-256(key "Jefe", "what do ya want for nothing?").
        let mac = Sha256Scram::hmac(b"Jefe", &[b"what do ya want for nothing?"]);
        assert_eq!(
            mac[..4],
            [0x5b, 0xdc, 0xc1, 0x46],
            "the HMAC used is HMAC-SHA-256"
        );
        let s = DerivedSecret::new("k", &[0x0b; 32]).unwrap();
        let password = s.password("CPE-0001");
        assert_eq!(password, s.password("cpe-0001"));
        assert_eq!(password.len(), PASSWORD_LEN);
        assert_eq!(
            password,
            URL_SAFE_NO_PAD.encode(Sha256Scram::hmac(&[0x0b; 32], &[b"cpe-0001"]))
        );
        assert!(password
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_ne!(password, s.password("cpe-0002"));
        assert_ne!(password, secret("k", 1).password("cpe-0001"));
    }

    #[test]
    fn short_secrets_are_refused_and_files_are_trimmed() {
        assert!(matches!(
            DerivedSecret::new("old", &[1; 31]),
            Err(DerivedError::TooShort { len: 31, .. })
        ));
        let dir = std::env::temp_dir().join(format!("crbroker-derived-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("k");
        std::fs::write(&path, format!("{}\r\n\n", "a".repeat(32))).unwrap();
        let loaded = DerivedSecret::load("k", &path).unwrap();
        assert_eq!(
            loaded.password("x"),
            DerivedSecret::new("k", "a".repeat(32).as_bytes())
                .unwrap()
                .password("x")
        );
        std::fs::write(&path, format!("{}\n", "a".repeat(31))).unwrap();
        let e = DerivedSecret::load("k", &path).unwrap_err();
        assert!(
            e.to_string().contains(&path.display().to_string()) && e.to_string().contains("31"),
            "{e}"
        );
        let e = DerivedSecret::load("gone", &dir.join("missing")).unwrap_err();
        assert!(matches!(e, DerivedError::Io { .. }), "{e}");
        assert!(e.to_string().contains("\"gone\""), "{e}");
        // Debug shows the id, never the bytes.
        assert_eq!(format!("{loaded:?}"), "DerivedSecret { id: \"k\", .. }");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn only_prefixed_valid_usernames_qualify() {
        let derived = source(vec![secret("a", 1)], 8);
        assert!(derived.qualifies("cpe-1"));
        assert!(derived.qualifies("lab-x"), "prefixes are lowercased");
        assert!(
            !derived.qualifies("cpe-"),
            "the prefix alone is not a username"
        );
        assert!(!derived.qualifies("acs"));
        assert!(!derived.qualifies("cpe-a@b"));
        assert!(!derived.qualifies(&format!("cpe-{}", "x".repeat(1020))));
        assert!(derived.account("acs").is_none());
        assert!(derived.may_exist("cpe-7") && !derived.may_exist("xcpe-7"));
    }

    #[test]
    fn every_secret_logs_in_with_plain_and_nothing_else() {
        let (new, old) = (secret("new", 2), secret("old", 1));
        let (pw_new, pw_old) = (new.password("cpe-1"), old.password("cpe-1"));
        let derived = source(vec![new, old], 8);
        let account = derived.account("cpe-1").unwrap();
        assert!(verify_plain(&account, pw_new.as_bytes()));
        assert!(verify_plain(&account, pw_old.as_bytes()));
        assert!(!verify_plain(&account, b"wrong"));
        assert!(!verify_plain(
            &account,
            secret("x", 3).password("cpe-1").as_bytes()
        ));
        let other = derived.account("cpe-2").unwrap();
        assert!(!verify_plain(&other, pw_new.as_bytes()));
        assert!(format!("{account:?}").contains("derived"));
    }

    #[test]
    fn scram_keys_are_derived_per_candidate_in_order_and_cached() {
        let derived = source(vec![secret("new", 2), secret("old", 1)], 8);
        let account = derived.account("cpe-1").unwrap();
        let params = ScramParams {
            salt: vec![7; 16],
            iterations: 16,
        };
        assert_eq!(account.candidates_derived(), 0);
        let first = account.scram_key_candidates::<Sha1Scram>(&params).next();
        assert_eq!(
            account.candidates_derived(),
            1,
            "only the first was reached"
        );
        let all: Vec<_> = account.scram_key_candidates::<Sha1Scram>(&params).collect();
        assert_eq!(all.len(), 2);
        assert!(first == all.first().copied());
        assert_eq!(account.candidates_derived(), 2);
        let expected = crate::auth::crypto::derive_keys::<Sha1Scram>(
            derived.secrets()[1].password("cpe-1").as_bytes(),
            &params.salt,
            16,
        );
        assert!(all[1] == expected);
        // The cache hands out the same account: the keys stay derived.
        assert!(Arc::ptr_eq(&account, &derived.account("cpe-1").unwrap()));
    }

    #[test]
    fn cache_is_bounded_and_keeps_accounts_in_use() {
        let derived = source(vec![secret("a", 1)], 10);
        let kept = derived.account("cpe-kept").unwrap();
        for i in 0..1000 {
            derived.account(&format!("cpe-{i}")).unwrap();
            // One CPE logs in again and again: it stays cached however many others come.
            assert!(Arc::ptr_eq(&kept, &derived.account("cpe-kept").unwrap()));
            assert!(derived.cached() <= 10, "{} cached", derived.cached());
        }
        assert!(derived.cached() >= 5);
        // An evicted account is made again, with the same passwords.
        let again = derived.account("cpe-0").unwrap();
        assert!(verify_plain(
            &again,
            derived.secrets()[0].password("cpe-0").as_bytes()
        ));
        // The smallest cache still works.
        let tiny = source(vec![secret("a", 1)], 0);
        assert!(tiny.account("cpe-1").is_some() && tiny.account("cpe-2").is_some());
        assert!(tiny.cached() <= 2);
    }

    #[test]
    fn same_settings_compares_secret_bytes_prefixes_and_bound() {
        let a = source(vec![secret("a", 1), secret("b", 2)], 10);
        assert!(a.same_settings(&source(vec![secret("a", 1), secret("b", 2)], 10)));
        assert!(!a.same_settings(&source(vec![secret("a", 1), secret("b", 3)], 10)));
        assert!(!a.same_settings(&source(vec![secret("b", 2), secret("a", 1)], 10)));
        assert!(!a.same_settings(&source(vec![secret("a", 1)], 10)));
        assert!(!a.same_settings(&source(vec![secret("a", 1), secret("b", 2)], 20)));
        let other_prefix = DerivedAccounts::new(vec![secret("a", 1), secret("b", 2)], ["x-"], 10);
        assert!(!a.same_settings(&other_prefix));
    }
}
