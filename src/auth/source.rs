//! Where a login's account comes from: the [`AccountSource`] trait every source of accounts
//! implements, the chain of sources the broker asks ([`Accounts`]), and the one-account view a
//! SASL exchange checks against ([`LoginAccount`], a [`Credentials`]).
//!
//! A login asks the chain once, as soon as the client names its username (after the login delay,
//! before any credential is checked): the accounts file and inline accounts first (in memory, no
//! await), then the other sources in the order the configuration lists them. The first source
//! that knows the username decides; a source that cannot answer (a database that is down) makes
//! the login fail with `<temporary-auth-failure/>` unless an earlier source knew the account.
//! The SASL mechanisms stay synchronous and I/O-free: they only see the resolved account.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use super::{Account, AccountStore, ScramParams};

/// The role an account logs in with, where the source stores one (a database row). Sources
/// without roles (the accounts file) leave it to the configuration's `accounts.acs` list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccountRole {
    /// A device: receives connection requests.
    Cpe,
    /// An ACS logged in as a client: sends connection requests.
    Acs,
}

/// What a source answers for one username.
pub enum Resolved {
    /// The source holds this account.
    Found {
        /// The credential to check.
        account: Arc<Account>,
        /// The role stored with it, if the source stores roles.
        role: Option<AccountRole>,
    },
    /// The source knows for sure that it does not hold this username.
    Unknown,
    /// The source cannot tell now (its backend is unreachable); the login must not be refused as
    /// if the password were wrong.
    Unavailable,
}

/// A future returned by [`AccountSource::resolve`].
pub type ResolveFuture<'a> = Pin<Box<dyn Future<Output = Resolved> + Send + 'a>>;

/// A source of accounts besides the accounts file: derived credentials, a database, ….
///
/// `resolve` is called once per login that names a username (never per stanza), so a boxed
/// future is fine. Implementations keep their own bounded caches.
pub trait AccountSource: Send + Sync + fmt::Debug {
    /// Short name for logs, metrics and API answers (`"derived"`, `"postgres"`).
    fn kind(&self) -> &'static str;

    /// Look up `username` (already normalised: ASCII lower case, length checked).
    fn resolve<'a>(&'a self, username: &'a str) -> ResolveFuture<'a>;

    /// Whether `username` may still be a valid account, answered from memory without I/O. A
    /// session that finished its login while a change removed its account checks this at bind
    /// time; `true` when unsure.
    fn may_exist(&self, _username: &str) -> bool {
        true
    }
}

/// The sources a login asks, in order: the accounts file and inline accounts, then the others.
/// Swapped whole by a reload (sources that hold connections are carried over by the reload).
#[derive(Debug, Default)]
pub struct Accounts {
    file: Arc<AccountStore>,
    others: Vec<Arc<dyn AccountSource>>,
}

impl Accounts {
    /// A chain of the accounts file store and then `others`, in order.
    pub fn new(file: Arc<AccountStore>, others: Vec<Arc<dyn AccountSource>>) -> Accounts {
        Accounts { file, others }
    }

    /// Only the accounts file and inline accounts.
    pub fn file_only(file: AccountStore) -> Accounts {
        Accounts::new(Arc::new(file), Vec::new())
    }

    /// The accounts file and inline accounts.
    pub fn file(&self) -> &Arc<AccountStore> {
        &self.file
    }

    /// The sources after the accounts file.
    pub fn others(&self) -> &[Arc<dyn AccountSource>] {
        &self.others
    }

    /// Ask the sources in order for `username` (normalised). The typical SCRAM parameters
    /// (shown to unknown users and `plain:` accounts) come from the accounts file store.
    pub async fn resolve(self: &Arc<Self>, username: &str) -> LoginAccount {
        let found = if self.file.lookup(username).is_some() {
            Some(Found::InFile)
        } else {
            let mut unavailable = false;
            let mut found = None;
            for source in &self.others {
                match source.resolve(username).await {
                    Resolved::Found { account, role } => {
                        found = Some(Found::Shared { account, role });
                        break;
                    }
                    Resolved::Unknown => {}
                    Resolved::Unavailable => unavailable = true,
                }
            }
            match found {
                Some(found) => Some(found),
                None if unavailable => {
                    return LoginAccount {
                        chain: self.clone(),
                        username: username.into(),
                        found: None,
                        unavailable: true,
                    }
                }
                None => None,
            }
        };
        LoginAccount {
            chain: self.clone(),
            username: username.into(),
            found,
            unavailable: false,
        }
    }

    /// Whether `username` may still be an account, from memory (see [`AccountSource::may_exist`]).
    pub fn may_exist(&self, username: &str) -> bool {
        self.file.get(username).is_some() || self.others.iter().any(|s| s.may_exist(username))
    }
}

enum Found {
    /// In the accounts file store of the chain (looked up again there: no copy).
    InFile,
    /// From another source.
    Shared {
        account: Arc<Account>,
        role: Option<AccountRole>,
    },
}

/// The outcome of asking the chain for one username: the view a SASL exchange checks against.
pub struct LoginAccount {
    chain: Arc<Accounts>,
    username: Box<str>,
    found: Option<Found>,
    unavailable: bool,
}

impl fmt::Debug for LoginAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoginAccount")
            .field("username", &self.username)
            .field("found", &self.found.is_some())
            .field("unavailable", &self.unavailable)
            .finish()
    }
}

impl LoginAccount {
    /// The normalised username asked for.
    pub fn username(&self) -> &str {
        &self.username
    }

    /// True when no source could answer and none knew the account: the login must end with
    /// `<temporary-auth-failure/>`.
    pub fn unavailable(&self) -> bool {
        self.unavailable
    }

    /// True when a source holds the account (SASL EXTERNAL needs nothing more: the certificate
    /// is the credential).
    pub fn found(&self) -> bool {
        self.found.is_some()
    }

    /// The role the source stores with the account, if any.
    pub fn role(&self) -> Option<AccountRole> {
        match &self.found {
            Some(Found::Shared { role, .. }) => *role,
            _ => None,
        }
    }
}

/// What a SASL mechanism needs to know of the accounts: the account of a username, the SCRAM
/// parameters to show, and the dummy work for unknown users. Implemented by the accounts file
/// store (all its accounts) and by [`LoginAccount`] (the one account a login resolved).
pub trait Credentials {
    /// The account of `username` (ASCII case-insensitive) and its normalised name.
    fn lookup(&self, username: &str) -> Option<(&str, &Account)>;

    /// Salt and iteration count for a SCRAM server-first message (see
    /// [`AccountStore::scram_params`]). `None` only when the OS random source is unavailable.
    fn scram_params(&self, username: &str, account: Option<&Account>) -> Option<ScramParams>;

    /// Work equivalent to checking a typical account's password, for PLAIN logins of unknown
    /// users; always `false`.
    fn dummy_verify(&self, password: &[u8]) -> bool;
}

impl Credentials for AccountStore {
    fn lookup(&self, username: &str) -> Option<(&str, &Account)> {
        AccountStore::lookup(self, username)
    }

    fn scram_params(&self, username: &str, account: Option<&Account>) -> Option<ScramParams> {
        AccountStore::scram_params(self, username, account)
    }

    fn dummy_verify(&self, password: &[u8]) -> bool {
        AccountStore::dummy_verify(self, password)
    }
}

impl Credentials for LoginAccount {
    fn lookup(&self, username: &str) -> Option<(&str, &Account)> {
        if !username.eq_ignore_ascii_case(&self.username) {
            return None;
        }
        match &self.found {
            Some(Found::InFile) => self.chain.file.lookup(username),
            Some(Found::Shared { account, .. }) => Some((&self.username, account)),
            None => None,
        }
    }

    fn scram_params(&self, username: &str, account: Option<&Account>) -> Option<ScramParams> {
        self.chain.file.scram_params(username, account)
    }

    fn dummy_verify(&self, password: &[u8]) -> bool {
        self.chain.file.dummy_verify(password)
    }
}
