//! The PostgreSQL account store (`[accounts.postgres]`): accounts in the table
//! `crbroker_accounts` shared by every broker that uses the database, looked up at login through
//! a bounded in-memory cache, kept current by the change feed ([`changes`]), written by the
//! `/v1/accounts` API and `crbroker db import` ([`import`]); the schema lives in [`schema`].
//!
//! # Cache
//!
//! A login asks the cache first. Accounts stay cached until the change feed says their row
//! changed (or the cache evicts them when full); unknown and disabled usernames are cached
//! for [`NEGATIVE_TTL`] (the feed invalidates them as soon as the row appears). Cached answers
//! are trusted while the change feed has reached the database within `stale_ttl_secs`: when the
//! database goes away, cached accounts keep logging in that long, and every other login gets
//! [`Resolved::Unavailable`] (SASL `<temporary-auth-failure/>`).

mod changes;
mod import;
mod schema;

pub use changes::AccountSessions;
pub use import::{export_file, import_file, ImportReport};
pub use schema::{current_version, latest_version, migrate, MIGRATIONS};

use super::account::parse_credential;
use super::source::{AccountRole, AccountSource, ResolveFuture, Resolved};
use super::Account;
use crate::config::{Config, PostgresConfig};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use moka::sync::Cache;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_postgres::NoTls;

/// How long an unknown or disabled username stays cached (the change feed drops it sooner when
/// its row appears, so this only bounds memory churn and the feed-down case).
pub const NEGATIVE_TTL: Duration = Duration::from_secs(30);
/// Least time between two warnings about an unreachable database (one per login would flood).
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Errors of the PostgreSQL store.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("database: {}", describe(.0))]
    Db(#[from] tokio_postgres::Error),
    #[error("database pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("database did not answer within {0:?}")]
    Timeout(Duration),
    #[error("cannot read {path}: {source}")]
    UrlFile {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}: not a PostgreSQL connection URL")]
    BadUrl(String),
    #[error("the database schema is at version {found}, this broker needs {needed}: run `crbroker db migrate`")]
    Schema { found: i32, needed: i32 },
    #[error("the change feed's database connection closed")]
    FeedClosed,
    #[error("{0}")]
    Setup(String),
    #[error("{0}")]
    Import(String),
}

impl PgError {
    /// True when the database could not be reached or did not answer (as opposed to refusing a
    /// statement): the API answers 503 for these.
    pub fn is_unavailable(&self) -> bool {
        match self {
            PgError::Pool(_) | PgError::Timeout(_) | PgError::FeedClosed => true,
            PgError::Db(e) => e.as_db_error().is_none(),
            _ => false,
        }
    }
}

/// The server's own message when there is one (tokio-postgres shows only "db error").
fn describe(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => match std::error::Error::source(error) {
            Some(source) => format!("{error}: {source}"),
            None => error.to_string(),
        },
    }
}

/// What the cache holds for one username.
#[derive(Clone)]
enum Cached {
    Found {
        account: Arc<Account>,
        role: AccountRole,
    },
    /// No such row, or the account is disabled (both refuse the login the same way).
    Unknown { since: Instant },
}

/// One account as the API shows it (never the secret).
#[derive(Debug, serde::Serialize)]
pub struct AccountInfo {
    pub username: String,
    pub role: AccountRole,
    pub enabled: bool,
    /// `plain` or `scram`.
    pub kind: &'static str,
    /// RFC 3339, UTC.
    pub updated_at: String,
}

/// The PostgreSQL account source: pool, cache, and the clock of the change feed.
pub struct PostgresSource {
    pool: Pool,
    pg_config: tokio_postgres::Config,
    cache: Cache<Box<str>, Cached>,
    /// Bumped before each invalidation: a lookup that raced with one drops what it cached.
    epoch: AtomicU64,
    /// Milliseconds after `started` of the change feed's last successful read; 0 = never.
    last_contact_ms: AtomicU64,
    /// Milliseconds after `started` of the last warning about the database.
    last_warning_ms: AtomicU64,
    started: Instant,
    stale_ttl: Duration,
    poll_interval: Duration,
    query_timeout: Duration,
    /// Lookups answered from the cache (found or a fresh negative entry).
    cache_answers: AtomicU64,
    /// Lookups that read the database.
    queries: AtomicU64,
    /// Lookups the database could not answer (down, timeout): `<temporary-auth-failure/>`.
    unavailable: AtomicU64,
}

/// What `/metrics` shows of the PostgreSQL source (src/ops/exposition.rs reads it: auth does not
/// know about the ops side).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PostgresMetrics {
    pub cache_answers: u64,
    pub queries: u64,
    pub unavailable: u64,
    pub cached_accounts: u64,
    /// Seconds since the change feed last reached the database (None: never yet). Cached
    /// answers are trusted while this is under `stale_ttl_secs`.
    pub feed_age_secs: Option<f64>,
}

impl fmt::Debug for PostgresSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the URL: it may hold a password.
        f.debug_struct("PostgresSource")
            .field("cached", &self.cache.entry_count())
            .finish()
    }
}

/// The connection settings of `[accounts.postgres]` (the URL read from `url_file` if given).
pub fn connection_config(config: &Config) -> Result<tokio_postgres::Config, PgError> {
    let Some(postgres) = &config.accounts.postgres else {
        return Err(PgError::Setup(format!(
            "{}: no [accounts.postgres] section",
            config.origin
        )));
    };
    let (url, origin) = match (&postgres.url, &postgres.url_file) {
        (Some(url), _) => (url.expose().to_string(), config.origin.clone()),
        (None, Some(file)) => {
            let path = config.resolve(file.get_ref());
            let text = std::fs::read_to_string(&path).map_err(|source| PgError::UrlFile {
                path: path.display().to_string(),
                source,
            })?;
            let url = text.lines().next().unwrap_or_default().trim().to_string();
            (url, path.display().to_string())
        }
        (None, None) => (String::new(), config.origin.clone()),
    };
    let mut pg_config: tokio_postgres::Config = url
        .parse()
        .map_err(|_| PgError::BadUrl(format!("{origin}: accounts.postgres.url")))?;
    if pg_config.get_connect_timeout().is_none() {
        pg_config.connect_timeout(Duration::from_millis(postgres.query_timeout_ms));
    }
    if pg_config.get_application_name().is_none() {
        pg_config.application_name("crbroker");
    }
    Ok(pg_config)
}

/// One connection outside any pool (the CLI's `db` commands, the change feed). Its driver task
/// ends when the client is dropped.
pub async fn connect(
    pg_config: &tokio_postgres::Config,
) -> Result<tokio_postgres::Client, PgError> {
    let (client, connection) = pg_config.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!("database connection ended: {e}");
        }
    });
    Ok(client)
}

impl PostgresSource {
    /// The source for `settings`; connects lazily (a broker starts while the database is down).
    pub fn new(
        pg_config: tokio_postgres::Config,
        settings: &PostgresConfig,
    ) -> Result<Arc<PostgresSource>, PgError> {
        let query_timeout = Duration::from_millis(settings.query_timeout_ms);
        let manager = Manager::from_config(
            pg_config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(settings.pool_size)
            .wait_timeout(Some(query_timeout))
            .create_timeout(Some(query_timeout))
            .recycle_timeout(Some(query_timeout))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| PgError::Setup(format!("database pool: {e}")))?;
        Ok(Arc::new(PostgresSource {
            pool,
            pg_config,
            cache: Cache::new(settings.cache_entries),
            epoch: AtomicU64::new(0),
            last_contact_ms: AtomicU64::new(0),
            last_warning_ms: AtomicU64::new(0),
            started: Instant::now(),
            stale_ttl: Duration::from_secs(settings.stale_ttl_secs),
            poll_interval: Duration::from_secs(settings.poll_interval_secs),
            query_timeout,
            cache_answers: AtomicU64::new(0),
            queries: AtomicU64::new(0),
            unavailable: AtomicU64::new(0),
        }))
    }

    /// Start the change feed: until `stop`, it invalidates changed accounts and closes the
    /// sessions (through `sessions`) of accounts deleted or disabled.
    pub fn start_feed(
        self: &Arc<Self>,
        sessions: Arc<dyn AccountSessions>,
        stop: watch::Receiver<bool>,
    ) {
        tokio::spawn(changes::run(self.clone(), sessions, stop));
    }

    /// How many usernames the cache holds (approximate: eviction is asynchronous).
    pub fn cached(&self) -> u64 {
        self.cache.entry_count()
    }

    pub fn metrics(&self) -> PostgresMetrics {
        let last = self.last_contact_ms.load(Ordering::Relaxed);
        PostgresMetrics {
            cache_answers: self.cache_answers.load(Ordering::Relaxed),
            queries: self.queries.load(Ordering::Relaxed),
            unavailable: self.unavailable.load(Ordering::Relaxed),
            cached_accounts: self.cache.entry_count(),
            feed_age_secs: (last != 0).then(|| self.now_ms().saturating_sub(last) as f64 / 1000.0),
        }
    }

    fn now_ms(&self) -> u64 {
        // At least 1: 0 means "never".
        (self.started.elapsed().as_millis() as u64).max(1)
    }

    fn mark_contact(&self) {
        self.last_contact_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// Whether cached answers may be trusted: the change feed reached the database recently.
    fn cache_trusted(&self) -> bool {
        let last = self.last_contact_ms.load(Ordering::Relaxed);
        last != 0 && self.now_ms() - last <= self.stale_ttl.as_millis() as u64
    }

    fn warn_unavailable(&self, error: &PgError) {
        let now = self.now_ms();
        let last = self.last_warning_ms.load(Ordering::Relaxed);
        if last == 0 || now - last >= WARN_EVERY.as_millis() as u64 {
            self.last_warning_ms.store(now, Ordering::Relaxed);
            tracing::warn!("account database unavailable, logins of uncached accounts fail with temporary-auth-failure: {error}");
        }
    }

    /// Forget what the cache knows of `usernames` (this broker wrote them, or the feed saw them).
    fn invalidate<'a>(&self, usernames: impl IntoIterator<Item = &'a str>) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        for username in usernames {
            self.cache.invalidate(username);
        }
    }

    /// Run `work` on a pooled connection within the query timeout.
    async fn with_client<T, F>(&self, work: F) -> Result<T, PgError>
    where
        F: AsyncFnOnce(&deadpool_postgres::Client) -> Result<T, PgError>,
    {
        let attempt = async {
            let client = self.pool.get().await?;
            work(&client).await
        };
        tokio::time::timeout(self.query_timeout, attempt)
            .await
            .unwrap_or(Err(PgError::Timeout(self.query_timeout)))
    }

    async fn fetch(&self, username: &str) -> Result<Cached, PgError> {
        let row = self
            .with_client(async |client| {
                let statement = client
                    .prepare_cached(
                        "select credential, role, enabled from crbroker_accounts where username = $1",
                    )
                    .await?;
                Ok(client.query_opt(&statement, &[&username]).await?)
            })
            .await?;
        let since = Instant::now();
        let Some(row) = row else {
            return Ok(Cached::Unknown { since });
        };
        let (credential, role, enabled): (&str, &str, bool) = (row.get(0), row.get(1), row.get(2));
        if !enabled {
            return Ok(Cached::Unknown { since });
        }
        match parse_credential(credential) {
            Ok(account) => Ok(Cached::Found {
                account: Arc::new(account),
                role: parse_role(role),
            }),
            Err(problem) => {
                // Written by hand past the API's checks: refuse the login, say why in the log.
                tracing::warn!(username, "crbroker_accounts: invalid credential: {problem}");
                Ok(Cached::Unknown { since })
            }
        }
    }

    /// The account `username` (normalised) as the API shows it, or None.
    pub async fn get(&self, username: &str) -> Result<Option<AccountInfo>, PgError> {
        let row = self
            .with_client(async |client| {
                Ok(client
                    .query_opt(
                        "select role, enabled, credential,
                                to_char(updated_at at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')
                         from crbroker_accounts where username = $1",
                        &[&username],
                    )
                    .await?)
            })
            .await?;
        Ok(row.map(|row| {
            let credential: &str = row.get(2);
            AccountInfo {
                username: username.to_string(),
                role: parse_role(row.get(0)),
                enabled: row.get(1),
                kind: if credential.starts_with("scram:") {
                    "scram"
                } else {
                    "plain"
                },
                updated_at: row.get(3),
            }
        }))
    }

    /// Create or update an account; `credential` is already checked ([`parse_credential`]).
    /// Role and enabled keep their stored values (new accounts: `cpe`, enabled) when `None`.
    /// Returns true when the account was created.
    pub async fn put(
        &self,
        username: &str,
        credential: &str,
        role: Option<AccountRole>,
        enabled: Option<bool>,
    ) -> Result<bool, PgError> {
        let role = role.map(role_name);
        let created = self
            .with_client(async |client| {
                let row = client
                    .query_one(
                        "insert into crbroker_accounts (username, credential, role, enabled)
                         values ($1, $2, coalesce($3, 'cpe'), coalesce($4, true))
                         on conflict (username) do update set
                             credential = excluded.credential,
                             role = coalesce($3, crbroker_accounts.role),
                             enabled = coalesce($4, crbroker_accounts.enabled),
                             updated_at = now()
                         returning xmax = 0",
                        &[&username, &credential, &role, &enabled],
                    )
                    .await?;
                Ok(row.get::<_, bool>(0))
            })
            .await?;
        // This broker sees the change at once; the others (and this one's sessions) through
        // the change feed.
        self.invalidate([username]);
        Ok(created)
    }

    /// Delete an account; false when there was none.
    pub async fn delete(&self, username: &str) -> Result<bool, PgError> {
        let deleted = self
            .with_client(async |client| {
                Ok(client
                    .execute(
                        "delete from crbroker_accounts where username = $1",
                        &[&username],
                    )
                    .await?)
            })
            .await?;
        self.invalidate([username]);
        Ok(deleted > 0)
    }
}

impl AccountSource for PostgresSource {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn resolve<'a>(&'a self, username: &'a str) -> ResolveFuture<'a> {
        Box::pin(async move {
            if self.cache_trusted() {
                match self.cache.get(username) {
                    Some(Cached::Found { account, role }) => {
                        self.cache_answers.fetch_add(1, Ordering::Relaxed);
                        return Resolved::Found {
                            account,
                            role: Some(role),
                        };
                    }
                    Some(Cached::Unknown { since }) if since.elapsed() < NEGATIVE_TTL => {
                        self.cache_answers.fetch_add(1, Ordering::Relaxed);
                        return Resolved::Unknown;
                    }
                    _ => {}
                }
            }
            let epoch = self.epoch.load(Ordering::SeqCst);
            match self.fetch(username).await {
                Ok(cached) => {
                    self.queries.fetch_add(1, Ordering::Relaxed);
                    self.cache.insert(username.into(), cached.clone());
                    if self.epoch.load(Ordering::SeqCst) != epoch {
                        // An invalidation ran while we read: what we read may predate it.
                        self.cache.invalidate(username);
                    }
                    match cached {
                        Cached::Found { account, role } => Resolved::Found {
                            account,
                            role: Some(role),
                        },
                        Cached::Unknown { .. } => Resolved::Unknown,
                    }
                }
                Err(error) => {
                    self.unavailable.fetch_add(1, Ordering::Relaxed);
                    self.warn_unavailable(&error);
                    Resolved::Unavailable
                }
            }
        })
    }

    fn may_exist(&self, username: &str) -> bool {
        !matches!(self.cache.get(username), Some(Cached::Unknown { .. }))
    }
}

fn parse_role(role: &str) -> AccountRole {
    match role {
        "acs" => AccountRole::Acs,
        _ => AccountRole::Cpe,
    }
}

fn role_name(role: AccountRole) -> &'static str {
    match role {
        AccountRole::Acs => "acs",
        AccountRole::Cpe => "cpe",
    }
}
