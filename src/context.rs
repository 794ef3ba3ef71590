//! What every connection task shares: settings derived from the config, the router, the
//! accounts, TLS configurations, counters and the shutdown signal.
//!
//! A `Context` is one generation of settings: a reload (src/reload.rs) makes a new one with
//! [`Context::reconfigured`], and each connection keeps the one it was accepted with, so the
//! limits of a live session never change under it. What must be the same for every generation
//! (router, counters, login throttle, accounts, the SCRAM fake-salt secret, the shutdown signal)
//! is shared by `Arc`; the accounts are swapped in place, so that sessions accepted before a
//! reload never keep an old account store alive.

use crate::auth::{Accounts, CertificatePolicy};
use crate::config::{Config, LimitsConfig, ListenerKind, SaslMechanismName};
use crate::ops::metrics::Stats;
use crate::outbox::OutboxLimits;
use crate::proto::sasl::Mechanism;
use crate::ratelimit::Rate;
use crate::router::Router;
use crate::swap::Swap;
use crate::throttle::{DelayRule, LoginThrottle, ThrottleSettings};
use crate::xml::FramerLimits;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

pub struct Context {
    pub domain: String,
    pub router: Arc<Router>,
    /// The account sources, swapped by a reload; a login loads them once and checks every step
    /// against what they resolved.
    pub accounts: Arc<Swap<Accounts>>,
    pub stats: Arc<Stats>,
    pub throttle: Arc<LoginThrottle>,
    pub limits: FramerLimits,
    pub pre_auth_timeout: Duration,
    pub write_timeout: Duration,
    /// Idle time before TCP keepalive probes (None = off).
    pub tcp_keepalive: Option<Duration>,
    /// Outbox bounds of a CPE session (it is owed no answers).
    pub outbox_limits: OutboxLimits,
    pub auth_attempts_per_connection: u32,
    /// Outbox bounds of an ACS connection: the same for unsolicited stanzas, plus the room for
    /// answers to its pending requests.
    pub acs_outbox_limits: OutboxLimits,
    /// What a CPE session may send to ACS entities unprompted.
    pub cpe_to_acs: Rate,
    /// Least time from the start of a credential check to its failure answer.
    pub sasl_failure_floor: Duration,
    /// `[accounts.certificate]`: the usernames device certificates name (SASL EXTERNAL).
    pub certificates: CertificatePolicy,
    /// Per-process secret for SCRAM fake salts of unknown users.
    pub server_secret: [u8; 32],
    /// Component domain -> secret.
    pub component_secrets: Vec<(String, crate::config::Secret)>,
    pub shutdown: watch::Receiver<bool>,
}

impl Context {
    pub fn new(
        config: &Config,
        router: Arc<Router>,
        accounts: Arc<Swap<Accounts>>,
        stats: Arc<Stats>,
        shutdown: watch::Receiver<bool>,
    ) -> Context {
        let mut server_secret = [0u8; 32];
        // Without OS randomness the fake salts are merely predictable, which leaks only whether a
        // username exists; still, say so.
        if getrandom::getrandom(&mut server_secret).is_err() {
            tracing::warn!("no OS randomness: SCRAM fake salts are predictable");
        }
        let throttle = Arc::new(LoginThrottle::new(throttle_settings(&config.limits)));
        Context::derive(
            config,
            router,
            accounts,
            stats,
            throttle,
            server_secret,
            shutdown,
        )
    }

    /// The next generation after a reload: the shared parts of `self` with the settings of
    /// `config` (which the reload has checked may change at run time).
    pub fn reconfigured(&self, config: &Config) -> Context {
        Context::derive(
            config,
            self.router.clone(),
            self.accounts.clone(),
            self.stats.clone(),
            self.throttle.clone(),
            self.server_secret,
            self.shutdown.clone(),
        )
    }

    fn derive(
        config: &Config,
        router: Arc<Router>,
        accounts: Arc<Swap<Accounts>>,
        stats: Arc<Stats>,
        throttle: Arc<LoginThrottle>,
        server_secret: [u8; 32],
        shutdown: watch::Receiver<bool>,
    ) -> Context {
        let limits = &config.limits;
        Context {
            domain: config.domain().to_ascii_lowercase(),
            router,
            accounts,
            stats,
            throttle,
            limits: FramerLimits {
                max_stanza_bytes: limits.max_stanza_bytes,
                max_depth: limits.max_depth,
                max_attributes: limits.max_attributes,
                max_header_bytes: limits.max_header_bytes,
                max_nodes: limits.max_elements,
            },
            pre_auth_timeout: Duration::from_secs(limits.pre_auth_timeout_secs),
            write_timeout: Duration::from_secs(limits.stuck_session_grace_secs.max(1)),
            tcp_keepalive: (limits.tcp_keepalive_secs > 0)
                .then(|| Duration::from_secs(limits.tcp_keepalive_secs)),
            outbox_limits: OutboxLimits {
                stanzas: limits.outbox_stanzas,
                bytes: limits.outbox_bytes,
                answer_bytes: 0,
            },
            auth_attempts_per_connection: limits.auth_attempts_per_connection,
            acs_outbox_limits: acs_outbox_limits(limits),
            cpe_to_acs: Rate::new(limits.cpe_to_acs_burst, limits.cpe_to_acs_per_minute),
            sasl_failure_floor: Duration::from_millis(limits.sasl_failure_floor_ms),
            certificates: CertificatePolicy::from_config(&config.accounts.certificate),
            server_secret,
            component_secrets: config
                .components
                .iter()
                .map(|c| (c.domain.to_ascii_lowercase(), c.secret.clone()))
                .collect(),
            shutdown,
        }
    }
}

fn throttle_settings(limits: &LimitsConfig) -> ThrottleSettings {
    let base = Duration::from_millis(limits.login_delay_base_ms);
    ThrottleSettings {
        account: DelayRule {
            free: limits.login_delay_account_free,
            base,
            max: Duration::from_millis(limits.login_delay_account_max_ms),
        },
        address: DelayRule {
            free: limits.login_delay_address_free,
            base,
            max: Duration::from_millis(limits.login_delay_address_max_ms),
        },
        window: Duration::from_secs(limits.login_failure_window_secs),
    }
}

/// Outbox bounds of an ACS connection (and of the HTTP API's entity).
pub fn acs_outbox_limits(limits: &crate::config::LimitsConfig) -> OutboxLimits {
    OutboxLimits {
        stanzas: limits.outbox_stanzas,
        bytes: limits.outbox_bytes,
        answer_bytes: limits.acs_outbox_answer_bytes,
    }
}

/// Per-listener settings for c2s connections (rebuilt by a reload when the certificate, the TLS
/// versions or the SASL mechanisms change).
pub struct ListenerSettings {
    pub kind: ListenerKind,
    pub mechanisms: Vec<Mechanism>,
    pub tls: Arc<rustls::ServerConfig>,
}

/// Everything a listener hands to a new connection, replaced as a whole by a reload: an accept
/// loads it once (a read lock and an `Arc` clone) and the connection keeps what it got.
pub struct Generation {
    pub ctx: Arc<Context>,
    /// c2s listener settings, in config order.
    pub listeners: Vec<Arc<ListenerSettings>>,
}

pub fn mechanism(name: SaslMechanismName) -> Mechanism {
    match name {
        SaslMechanismName::Plain => Mechanism::Plain,
        SaslMechanismName::ScramSha1 => Mechanism::ScramSha1,
        SaslMechanismName::ScramSha256 => Mechanism::ScramSha256,
    }
}

pub type SharedContext = Arc<Context>;

/// Resolves once `signal` is true (or its sender is gone). Holds no borrow of the value, so the
/// future stays `Send`.
pub async fn stopped(signal: &mut watch::Receiver<bool>) {
    let _ = signal.wait_for(|stop| *stop).await;
}
