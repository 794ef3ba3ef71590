//! crbroker: an XMPP connection-request broker for TR-069 Annex K.
//!
//! CPEs log in as XMPP clients (c2s: TLS, SASL, bind); ACSs attach as XEP-0114 components or log
//! in as privileged client accounts; the broker relays connection requests and makes sure each
//! gets exactly one answer. Start here: [`Broker::start`] (used by `main.rs` and the tests).
//! `architecture.md` at the repository root walks through the modules.

pub mod auth;
pub mod caps;
pub mod config;
pub mod context;
pub mod jid;
pub mod listener;
pub mod ops;
pub mod outbox;
pub mod pending;
pub mod proto;
pub mod ratelimit;
pub mod reload;
pub mod router;
pub mod session;
pub mod swap;
pub mod throttle;
pub mod tls;
pub mod xml;

use crate::caps::ConnectionCaps;
use crate::config::{Config, ListenerKind};
use crate::context::{Context, Generation, ListenerSettings};
use crate::listener::{accept_loop, Service};
use crate::ops::metrics::Stats;
use crate::pending::PendingTable;
use crate::proto::stanza::ErrorType;
use crate::reload::{ReloadReport, Reloader};
use crate::router::Router;
use crate::swap::Swap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("accounts: {0}")]
    Accounts(#[from] auth::AuthError),
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
}

/// A running broker.
pub struct Broker {
    /// Bound c2s listeners, in config order (port 0 in the config becomes the real port here).
    pub c2s_addrs: Vec<(ListenerKind, SocketAddr)>,
    pub component_addr: Option<SocketAddr>,
    pub stats: Arc<Stats>,
    pub router: Arc<Router>,
    stop_accepting: watch::Sender<bool>,
    stop_sessions: watch::Sender<bool>,
    reloader: Reloader,
}

impl Broker {
    /// Load accounts and TLS material, bind every listener and start serving.
    pub async fn start(config: Config) -> Result<Broker, StartError> {
        let started = std::time::Instant::now();
        let accounts = reload::load_accounts(&config)?;
        tracing::info!(
            accounts = accounts.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "accounts loaded"
        );
        let identity = tls::Identity::load_or_create(&config)?;
        let stats = Arc::new(Stats::default());
        let requests = &config.requests;
        let pending = PendingTable::new(
            Duration::from_millis(requests.timeout_ms),
            requests.max_pending_per_cpe,
            requests.max_pending_per_acs,
        );
        let router = Arc::new(Router::new(
            config.domain(),
            &config.accounts.acs,
            config.components.iter().map(|c| c.domain.clone()),
            pending,
            stats.clone(),
        ));
        let (stop_accepting, accepting_rx) = watch::channel(false);
        let (stop_sessions, sessions_rx) = watch::channel(false);
        let accounts = Arc::new(Swap::new(Arc::new(accounts)));
        let ctx = Arc::new(Context::new(
            &config,
            router.clone(),
            accounts.clone(),
            stats.clone(),
            sessions_rx,
        ));
        let caps = Arc::new(ConnectionCaps::new(
            config.limits.max_sessions,
            config.limits.max_pre_auth_per_ip,
            config.limits.max_pre_auth_total,
        ));

        let mut listeners = Vec::with_capacity(config.listeners.len());
        let mut bound = Vec::with_capacity(config.listeners.len());
        for listener_config in &config.listeners {
            let tcp = bind(listener_config.address).await?;
            let address = tcp.local_addr().map_err(|source| StartError::Bind {
                address: listener_config.address,
                source,
            })?;
            listeners.push(Arc::new(ListenerSettings {
                kind: listener_config.kind,
                mechanisms: listener_config
                    .sasl_mechanisms
                    .iter()
                    .copied()
                    .map(context::mechanism)
                    .collect(),
                tls: identity
                    .server_config(&listener_config.tls_versions, config.tls.session_tickets)?,
            }));
            bound.push((tcp, listener_config.kind, address));
        }
        let component_tcp = match &config.component_listener {
            Some(component_config) => {
                let tcp = bind(component_config.address).await?;
                let address = tcp.local_addr().map_err(|source| StartError::Bind {
                    address: component_config.address,
                    source,
                })?;
                Some((tcp, address))
            }
            None => None,
        };
        let generation = Arc::new(Swap::new(Arc::new(Generation { ctx, listeners })));
        let mut c2s_addrs = Vec::new();
        for (index, (tcp, kind, address)) in bound.into_iter().enumerate() {
            tracing::info!(%address, ?kind, "c2s listener ready");
            c2s_addrs.push((kind, address));
            tokio::spawn(accept_loop(
                tcp,
                Service::C2s(index),
                generation.clone(),
                caps.clone(),
                accepting_rx.clone(),
            ));
        }
        let mut component_addr = None;
        if let Some((tcp, address)) = component_tcp {
            tracing::info!(%address, "component listener ready");
            component_addr = Some(address);
            tokio::spawn(accept_loop(
                tcp,
                Service::Component,
                generation.clone(),
                caps.clone(),
                accepting_rx.clone(),
            ));
        }
        tokio::spawn(expire_requests(router.clone(), accepting_rx));
        tracing::info!(
            domain = config.domain(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "crbroker started"
        );
        Ok(Broker {
            c2s_addrs,
            component_addr,
            stats,
            router: router.clone(),
            stop_accepting,
            stop_sessions,
            reloader: Reloader::new(config, identity, generation, accounts, router),
        })
    }

    /// Reload the configuration file (and the certificate, key and accounts it names) without
    /// dropping sessions; see [`crate::reload`] for what changes and what needs a restart.
    pub async fn reload(&self) -> ReloadReport {
        self.reloader.reload().await
    }

    /// A handle that reloads this broker (for a signal handler or the ops API).
    pub fn reloader(&self) -> Reloader {
        self.reloader.clone()
    }

    /// The address of the first c2s listener of `kind`.
    pub fn c2s_addr(&self, kind: ListenerKind) -> Option<SocketAddr> {
        self.c2s_addrs
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, a)| *a)
    }

    /// Graceful shutdown: stop accepting, answer every pending request, send each stream
    /// `<system-shutdown/>`, and wait (at most the configured bound) for connections to close.
    pub async fn shutdown(self) {
        let _ = self.stop_accepting.send(true);
        let router = &self.router;
        for request in router.pending.drain_all() {
            router.answer_for_cpe(
                request,
                "service-unavailable",
                ErrorType::Cancel,
                "shutdown",
            );
        }
        let _ = self.stop_sessions.send(true);
        let deadline = tokio::time::Instant::now() + self.reloader.shutdown_timeout();
        while Stats::get(&self.stats.connections_open) > 0 && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let left = Stats::get(&self.stats.connections_open);
        if left > 0 {
            tracing::warn!(
                connections = left,
                "shutdown bound reached with connections still open"
            );
        }
        tracing::info!("crbroker stopped");
    }
}

/// Run until `signal` resolves, then shut down gracefully. SIGHUP reloads meanwhile.
pub async fn run(config: Config, signal: impl Future<Output = ()>) -> Result<(), StartError> {
    // Installed before the listeners open: from then on SIGHUP no longer ends the process.
    let hangup = hangup_signal();
    let broker = Broker::start(config).await?;
    let reloads = tokio::spawn(reload_on_sighup(hangup, broker.reloader()));
    signal.await;
    reloads.abort();
    tracing::info!("shutdown requested");
    broker.shutdown().await;
    Ok(())
}

fn hangup_signal() -> Option<tokio::signal::unix::Signal> {
    use tokio::signal::unix::{signal, SignalKind};
    signal(SignalKind::hangup())
        .map_err(|e| {
            tracing::warn!("cannot install the SIGHUP handler, reload by signal is off: {e}");
        })
        .ok()
}

/// Each SIGHUP reloads; the report goes to the log.
async fn reload_on_sighup(hangup: Option<tokio::signal::unix::Signal>, reloader: Reloader) {
    let Some(mut hangup) = hangup else { return };
    while hangup.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading");
        reloader.reload().await.log();
    }
}

async fn bind(address: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| StartError::Bind { address, source })
}

/// Answer requests whose CPE did not answer in time. A coarse tick is enough: the deadline is
/// seconds, and the tick costs nothing while the table is empty.
async fn expire_requests(router: Arc<Router>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = crate::context::stopped(&mut stop) => return,
        }
        if !router.pending.is_empty() {
            router.expire_requests(std::time::Instant::now());
        }
    }
}
