//! Reload without dropping anyone (SIGHUP, and the ops API on top of [`Reloader::reload`]).
//!
//! A reload reads the whole configuration file again with the same parser and validation as at
//! start, then the certificate and key and the accounts (file and inline), and builds every new
//! TLS configuration. Only when all of that succeeded does it swap anything, and the swaps
//! cannot fail: an invalid file, certificate or accounts line leaves the running configuration
//! whole, and the report says why (file, line and key, as at start).
//!
//! What a reload changes:
//! - certificate and key, TLS versions, session tickets, SASL mechanisms, client CA and CRL
//!   files (read again at every reload: a new CRL revokes devices for new logins): a new
//!   [`Generation`] whose listener settings new connections get; established sessions keep the
//!   TLS session they have.
//! - accounts: the store is swapped; sessions of removed accounts are closed with
//!   [`ACCOUNT_REMOVED`] and their pending requests answered (`service-unavailable`, as for any
//!   CPE that goes away); a changed password leaves the live session alone (the next login
//!   needs the new one).
//! - `[accounts.derived]`: new secrets, prefixes or cache bound build a new derived source
//!   (empty cache; a removed secret's passwords stop logging in at once); sessions already
//!   logged in stay, like after a password change, unless their username no longer qualifies
//!   (then they are closed like removed accounts).
//! - component secrets: new handshakes use them; attached components stay.
//! - `[accounts.certificate]` (SASL EXTERNAL identity rule, trust_ca): new logins use it.
//! - the limits that are read when a connection starts (the stanza and stream limits,
//!   `pre_auth_timeout_secs`, the outbox bounds, the CPE-to-ACS rate, `stuck_session_grace_secs`,
//!   `sasl_failure_floor_ms`, `auth_attempts_per_connection`: see `changed_limits`) and
//!   `server.shutdown_timeout_secs`: connections accepted after the reload get the new values,
//!   live ones keep the values they started with.
//!
//! What needs a restart ([`restart_only_changes`], in [`changes`]): the domain, worker threads, listener
//! addresses, kinds, `reuse_port` and PROXY protocol settings (the socket and its accept loop
//! are made once), the component listener, the set of component domains and
//! `accounts.acs` (the router's policy), the login-delay settings (the failure tables hold
//! state computed with them; starting them afresh would hand a guesser a new budget), the
//! connection caps (the counts admitted under the old caps would be checked against new ones),
//! and `[requests]` (the pending table keeps deadlines in insertion order because the timeout
//! is one constant), `[accounts.postgres]` (its pool, cache and change feed carry over a reload as
//! they are) and `[cluster]` (the NATS connection and this node's identity). A file that changes
//! any of these is refused as a whole, naming the keys:
//! nothing is half applied.

mod changes;

use crate::account_sources::OtherSources;
use crate::auth::postgres::AccountSessions;
use crate::auth::{AccountDiff, AccountStore, Accounts};
use crate::config::{Config, ConfigError};
use crate::context::{self, Generation, ListenerSettings};
use crate::router::Router;
use crate::swap::Swap;
use crate::tls::{ClientTrust, Identity, TlsError};
use changes::changed_limits;
pub use changes::restart_only_changes;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The stream error that closes the session of an account a reload removed. RFC 6120 4.9.3.12
/// `<not-authorized/>`: the entity's credentials are no longer good (Prosody closes the
/// sessions of a deleted account the same way).
pub const ACCOUNT_REMOVED: &str = "not-authorized";

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("the running configuration was not read from a file ({0}): nothing to reload")]
    NoFile(String),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("accounts: {0}")]
    Accounts(#[from] crate::auth::AuthError),
    #[error("{file}: only a restart can apply changes to {}", keys.join(", "))]
    NeedsRestart { file: String, keys: Vec<String> },
    #[error("the reload task failed: {0}")]
    Internal(String),
}

/// What a reload changed. Empty when the files were read and nothing differed. Deserialize: the
/// CLI (`crbroker reload`) reads it back from `POST /v1/reload` and prints it with this Display.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReloadChanges {
    /// The certificate chain or the key differ: new handshakes use the new ones.
    pub certificate: bool,
    /// TLS versions, session tickets, SASL mechanisms or client CA/CRLs of a listener differ.
    pub listener_settings: bool,
    pub accounts: AccountDiff,
    /// Accounts after the reload.
    pub accounts_total: usize,
    /// Sessions of removed accounts asked to close.
    pub sessions_closed: usize,
    /// `[accounts.derived]` changed (secrets, prefixes or cache bound; or it was added or
    /// removed): logins use the new settings, the derived accounts' cache starts empty.
    #[serde(default)]
    pub derived: bool,
    /// Component domains whose secret changed.
    pub component_secrets: usize,
    /// Keys (`limits.*`, `server.shutdown_timeout_secs`, `accounts.certificate`) whose value
    /// changed.
    pub limits: Vec<String>,
}

impl ReloadChanges {
    pub fn is_empty(&self) -> bool {
        *self
            == ReloadChanges {
                accounts_total: self.accounts_total,
                ..ReloadChanges::default()
            }
    }
}

impl std::fmt::Display for ReloadChanges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_empty() {
            return write!(f, "nothing changed ({} accounts)", self.accounts_total);
        }
        let a = &self.accounts;
        write!(
            f,
            "certificate {}, listener settings {}, accounts +{} -{} ~{} ({} in all, {} sessions closed), \
             derived credentials {}, component secrets {}, limits [{}]",
            if self.certificate { "new" } else { "same" },
            if self.listener_settings { "new" } else { "same" },
            a.added,
            a.removed,
            a.changed,
            self.accounts_total,
            self.sessions_closed,
            if self.derived { "new" } else { "same" },
            self.component_secrets,
            self.limits.join(", ")
        )
    }
}

/// The answer to one reload: where it read from, and what changed or why nothing did.
#[derive(Debug)]
pub struct ReloadReport {
    pub source: String,
    pub outcome: Result<ReloadChanges, ReloadError>,
}

impl ReloadReport {
    /// One log line: info when applied, warn when refused (the old configuration stays).
    pub fn log(&self) {
        match &self.outcome {
            Ok(changes) => tracing::info!(source = %self.source, "reloaded: {changes}"),
            Err(e) => tracing::warn!(
                source = %self.source,
                "reload refused, the running configuration stays as it was: {e}"
            ),
        }
    }
}

/// Reloads a running broker. Cheap to clone; reloads run one at a time.
#[derive(Clone)]
pub struct Reloader {
    inner: Arc<Inner>,
}

struct Inner {
    generation: Arc<Swap<Generation>>,
    accounts: Arc<Swap<Accounts>>,
    router: Arc<Router>,
    /// What is running. Locked for a whole reload, on a blocking thread, never across an await
    /// and never from the runtime's threads (a reload of a large accounts file takes seconds).
    applied: Mutex<Applied>,
    /// `server.shutdown_timeout_secs` in force, readable without that lock.
    shutdown_timeout_secs: AtomicU64,
}

struct Applied {
    config: Config,
    identity: Identity,
    /// Each listener's client CA certificates and CRLs as last read (None: no client certs).
    client_trust: Vec<Option<ClientTrust>>,
    /// The account sources after the accounts file, as built for `config`.
    sources: OtherSources,
}

impl Reloader {
    pub(crate) fn new(
        config: Config,
        identity: Identity,
        client_trust: Vec<Option<ClientTrust>>,
        sources: OtherSources,
        generation: Arc<Swap<Generation>>,
        accounts: Arc<Swap<Accounts>>,
        router: Arc<Router>,
    ) -> Reloader {
        Reloader {
            inner: Arc::new(Inner {
                generation,
                accounts,
                router,
                shutdown_timeout_secs: AtomicU64::new(config.server.shutdown_timeout_secs),
                applied: Mutex::new(Applied {
                    config,
                    identity,
                    client_trust,
                    sources,
                }),
            }),
        }
    }

    /// Read the configuration file the broker was started with (and everything it names) again
    /// and apply it, or keep the running configuration and say why.
    pub async fn reload(&self) -> ReloadReport {
        self.run(None).await
    }

    /// Apply `config` (already parsed and validated) as a reload would apply the file.
    pub async fn apply(&self, config: Config) -> ReloadReport {
        self.run(Some(config)).await
    }

    /// The shutdown bound in force.
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.inner.shutdown_timeout_secs.load(Ordering::Relaxed))
    }

    /// File reading, PBKDF2-free account parsing and the certificate load run on a blocking
    /// thread: an accounts file of a million lines takes a while.
    async fn run(&self, config: Option<Config>) -> ReloadReport {
        let inner = self.inner.clone();
        let given = config.as_ref().map(|c| c.origin.clone());
        tokio::task::spawn_blocking(move || {
            let mut applied = inner.lock();
            let source = given.unwrap_or_else(|| applied.config.origin.clone());
            let outcome = inner.reload(&mut applied, config);
            ReloadReport { source, outcome }
        })
        .await
        .unwrap_or_else(|e| ReloadReport {
            source: "-".into(),
            outcome: Err(ReloadError::Internal(e.to_string())),
        })
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Applied> {
        // A panic in an earlier reload happened before its swaps (they cannot panic) or after
        // them; either way `Applied` describes a whole configuration.
        self.applied.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn reload(
        &self,
        applied: &mut Applied,
        given: Option<Config>,
    ) -> Result<ReloadChanges, ReloadError> {
        // Everything that can fail comes first, before anything is swapped.
        let config = match given {
            Some(config) => config,
            None => match &applied.config.path {
                Some(path) => Config::load(path)?,
                None => return Err(ReloadError::NoFile(applied.config.origin.clone())),
            },
        };
        let keys = restart_only_changes(&applied.config, &config);
        if !keys.is_empty() {
            return Err(ReloadError::NeedsRestart {
                file: config.origin.clone(),
                keys,
            });
        }
        let identity = Identity::load_or_create(&config)?;
        let accounts = load_accounts(&config)?;
        let running = self.accounts.load();
        let file_scram_changed = running.file().typical_scram() != accounts.typical_scram();
        let sources = applied.sources.reloaded(&config, file_scram_changed)?;
        let derived = sources.derived_differs(&applied.sources);
        let current = self.generation.load();
        let old = &applied.config;
        let certificate = !identity.same_as(&applied.identity);
        let tls_changed = certificate || old.tls.session_tickets != config.tls.session_tickets;
        let mut listener_settings = tls_changed;
        let mut listeners = Vec::with_capacity(config.listeners.len());
        let mut client_trust = Vec::with_capacity(config.listeners.len());
        for (i, (was, now)) in old.listeners.iter().zip(&config.listeners).enumerate() {
            // Read again every time: a new CRL in an unchanged file name is how a device is
            // revoked.
            let trust = ClientTrust::load(&config, now)?;
            let trust_changed = applied.client_trust.get(i) != Some(&trust);
            let versions_changed = was.tls_versions != now.tls_versions;
            let mechanisms_changed = was.sasl_mechanisms != now.sasl_mechanisms;
            listener_settings |= versions_changed || mechanisms_changed || trust_changed;
            let tls = if tls_changed || versions_changed || trust_changed {
                identity.server_config(
                    &now.tls_versions,
                    config.tls.session_tickets,
                    trust.as_ref(),
                )?
            } else {
                current.listeners[i].tls.clone()
            };
            listeners.push(Arc::new(ListenerSettings {
                kind: now.kind,
                mechanisms: now
                    .sasl_mechanisms
                    .iter()
                    .copied()
                    .map(context::mechanism)
                    .collect(),
                tls,
            }));
            client_trust.push(trust);
        }
        let limits = changed_limits(old, &config);
        let component_secrets = old
            .components
            .iter()
            .filter(|was| {
                config.components.iter().any(|now| {
                    now.domain.eq_ignore_ascii_case(&was.domain) && now.secret != was.secret
                })
            })
            .count();

        // From here on nothing fails: swap.
        if listener_settings || !limits.is_empty() || component_secrets > 0 {
            let ctx = if limits.is_empty() && component_secrets == 0 {
                current.ctx.clone()
            } else {
                Arc::new(current.ctx.reconfigured(&config))
            };
            let listeners = if listener_settings {
                listeners
            } else {
                current.listeners.clone()
            };
            self.generation
                .store(Arc::new(Generation { ctx, listeners }));
        }
        let diff = running.file().diff(&accounts);
        let accounts_total = accounts.len();
        let mut sessions_closed = 0;
        if diff != AccountDiff::default() || derived {
            // Sources whose settings did not change (and what they hold) carry over.
            let accounts = Arc::new(Accounts::new(Arc::new(accounts), sources.chain()));
            self.accounts.store(accounts.clone());
            if diff.removed > 0 || derived {
                // A device the CA alone vouches for (SASL EXTERNAL, trust_ca) has no account to
                // remove.
                let certificates =
                    crate::auth::CertificatePolicy::from_config(&config.accounts.certificate);
                sessions_closed = self.router.close_clients(
                    |user| accounts.may_exist(user) || certificates.vouches_for(user),
                    ACCOUNT_REMOVED,
                );
            }
        }
        self.shutdown_timeout_secs
            .store(config.server.shutdown_timeout_secs, Ordering::Relaxed);
        applied.config = config;
        applied.identity = identity;
        applied.client_trust = client_trust;
        applied.sources = sources;
        Ok(ReloadChanges {
            certificate,
            listener_settings,
            accounts: diff,
            accounts_total,
            sessions_closed,
            derived,
            component_secrets,
            limits,
        })
    }
}

/// The change feed of a shared account store (PostgreSQL) closes the sessions of an account
/// deleted or disabled there the way a reload closes those of an account removed from the file.
impl AccountSessions for Router {
    fn has_sessions(&self, username: &str) -> bool {
        let bare = crate::jid::JidRef {
            local: Some(username),
            domain: self.domain(),
            resource: None,
        };
        !self.sessions_of(&bare).is_empty()
    }

    fn close_account(&self, username: &str) -> usize {
        Router::close_account(self, username, ACCOUNT_REMOVED)
    }
}

/// The account store a configuration names: the accounts file, then the inline accounts.
pub(crate) fn load_accounts(config: &Config) -> Result<AccountStore, crate::auth::AuthError> {
    let mut accounts = match &config.accounts.file {
        Some(file) => AccountStore::load(&config.resolve(file.get_ref()))?,
        None => AccountStore::new(),
    };
    for (username, password) in &config.accounts.plain {
        accounts.insert_plain(username, password.expose())?;
    }
    Ok(accounts)
}
