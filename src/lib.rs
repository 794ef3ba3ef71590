//! crbroker: an XMPP connection-request broker for TR-069 Annex K.
//!
//! CPEs log in as XMPP clients (c2s: TLS, SASL, bind); ACSs attach as XEP-0114 components or log
//! in as privileged client accounts; the broker relays connection requests and makes sure each
//! gets exactly one answer. Start here: [`Broker::start`] (used by `main.rs` and the tests).
//! `architecture.md` at the repository root walks through the modules.

pub mod account_sources;
pub mod auth;
pub mod caps;
pub mod cluster;
pub mod config;
pub mod context;
pub mod jid;
pub mod listener;
pub mod ops;
pub mod outbox;
pub mod pending;
pub mod proto;
pub mod proxy;
pub mod ratelimit;
pub mod reload;
pub mod router;
pub mod session;
pub mod swap;
pub mod throttle;
pub mod tls;
pub mod xml;

use crate::account_sources::OtherSources;
use crate::caps::ConnectionCaps;
use crate::config::{Config, ListenerKind};
use crate::context::{Context, Generation, ListenerSettings};
use crate::listener::{accept_loop, Service};
use crate::ops::exposition::Sources;
use crate::ops::http::{OpsState, Phase};
use crate::ops::metrics::Stats;
use crate::pending::PendingTable;
use crate::proto::stanza::ErrorType;
use crate::reload::{ReloadReport, Reloader};
use crate::router::Router;
use crate::swap::Swap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
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
    #[error("{path}: API tokens: {message}")]
    ApiTokens {
        path: std::path::PathBuf,
        message: String,
    },
    #[error("accounts.postgres: {0}")]
    Postgres(#[from] auth::postgres::PgError),
    #[error(transparent)]
    Cluster(#[from] cluster::ClusterError),
    #[error("cannot listen on {address}: {source}{}", in_use_hint(source))]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
}

/// What to do about an address another process holds.
fn in_use_hint(error: &std::io::Error) -> &'static str {
    match error.kind() {
        std::io::ErrorKind::AddrInUse => {
            " (another process listens there; broker processes can share a c2s or component \
             listener's address only with reuse_port = true in every one of them)"
        }
        _ => "",
    }
}

/// A running broker.
pub struct Broker {
    /// Bound c2s listeners, in config order (port 0 in the config becomes the real port here).
    pub c2s_addrs: Vec<(ListenerKind, SocketAddr)>,
    pub component_addr: Option<SocketAddr>,
    pub stats: Arc<Stats>,
    pub router: Arc<Router>,
    /// The ops listener's state, the API's, and the bound address (None when `ops.enabled` is
    /// false).
    ops: Option<(Arc<OpsState>, Arc<ops::api::ApiState>, SocketAddr)>,
    stop_ops: watch::Sender<bool>,
    stop_accepting: watch::Sender<bool>,
    stop_sessions: watch::Sender<bool>,
    reloader: Reloader,
}

impl Broker {
    /// Bind the ops listener (it answers `/readyz` 503 while starting), load accounts and TLS
    /// material, bind every listener and start serving.
    pub async fn start(config: Config) -> Result<Broker, StartError> {
        let started = std::time::Instant::now();
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
        let caps = Arc::new(ConnectionCaps::new(
            config.limits.max_sessions,
            config.limits.max_pre_auth_per_ip,
            config.limits.max_pre_auth_total,
        ));
        // Dropped (stopping the ops listener) if the start fails below.
        let (stop_ops, ops_rx) = watch::channel(false);
        // Before anything attaches to the router: the cluster learns of every entity (the API's
        // too). It lives until the very end, like the ops listener.
        if let Some(cluster) = &config.cluster {
            cluster::start(&config, cluster, &router, ops_rx.clone()).await?;
        }
        let postgres_metrics = Arc::new(OnceLock::new());
        let ops = match config.ops.enabled {
            true => Some(
                start_ops(
                    &config,
                    Sources {
                        stats: stats.clone(),
                        router: router.clone(),
                        caps: caps.clone(),
                        postgres: postgres_metrics.clone(),
                    },
                    ops_rx,
                )
                .await?,
            ),
            false => None,
        };
        let (stop_accepting, accepting_rx) = watch::channel(false);
        let (stop_sessions, sessions_rx) = watch::channel(false);
        let accounts = reload::load_accounts(&config)?;
        let mut sources = OtherSources::load(&config)?;
        tracing::info!(
            accounts = accounts.len(),
            derived_secrets = sources.derived.as_ref().map_or(0, |d| d.secrets().len()),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "accounts loaded"
        );
        let identity = tls::Identity::load_or_create(&config)?;
        sources.postgres = start_postgres(&config, &router, &stop_sessions)?;
        if let Some(postgres) = &sources.postgres {
            let _ = postgres_metrics.set(postgres.clone());
        }
        let accounts = Arc::new(Swap::new(Arc::new(auth::Accounts::new(
            Arc::new(accounts),
            sources.chain(),
        ))));
        let ctx = Arc::new(Context::new(
            &config,
            router.clone(),
            accounts.clone(),
            stats.clone(),
            sessions_rx,
        ));

        let mut listeners = Vec::with_capacity(config.listeners.len());
        let mut bound = Vec::with_capacity(config.listeners.len());
        let mut client_trust = Vec::with_capacity(config.listeners.len());
        for listener_config in &config.listeners {
            let trust = tls::ClientTrust::load(&config, listener_config)?;
            let tcp = bind(listener_config.address, listener_config.reuse_port)?;
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
                tls: identity.server_config(
                    &listener_config.tls_versions,
                    config.tls.session_tickets,
                    trust.as_ref(),
                )?,
            }));
            client_trust.push(trust);
            let proxy = listener_config
                .proxy_sources()
                .map(|networks| Arc::new(proxy::ProxySources::new(networks)));
            bound.push((tcp, listener_config.kind, address, proxy));
        }
        let component_tcp = match &config.component_listener {
            Some(component_config) => {
                let tcp = bind(component_config.address, component_config.reuse_port)?;
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
        for (index, (tcp, kind, address, proxy)) in bound.into_iter().enumerate() {
            tracing::info!(%address, ?kind, proxy_protocol = proxy.is_some(), "c2s listener ready");
            c2s_addrs.push((kind, address));
            tokio::spawn(accept_loop(
                tcp,
                Service::C2s { index, proxy },
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
        if let Some((state, _, _)) = &ops {
            state.set_phase(Phase::Ready);
        }
        tracing::info!(
            domain = config.domain(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "crbroker started"
        );
        let postgres = sources.postgres.clone();
        let reloader = Reloader::new(
            config,
            identity,
            client_trust,
            sources,
            generation,
            accounts,
            router.clone(),
        );
        if let Some((_, api, _)) = &ops {
            let _ = api.reloader.set(reloader.clone());
            if let Some(postgres) = postgres {
                let _ = api.accounts.set(postgres);
            }
        }
        Ok(Broker {
            c2s_addrs,
            component_addr,
            stats,
            router: router.clone(),
            ops,
            stop_ops,
            stop_accepting,
            stop_sessions,
            reloader,
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

    /// The bound address of the ops HTTP listener (port 0 in the config becomes the real port).
    pub fn ops_addr(&self) -> Option<SocketAddr> {
        self.ops.as_ref().map(|(_, _, address)| *address)
    }

    /// Graceful shutdown: `/readyz` turns 503, stop accepting, answer every pending request,
    /// send each stream `<system-shutdown/>`, and wait (at most the configured bound) for
    /// connections to close. The ops listener serves until the end.
    pub async fn shutdown(self) {
        if let Some((state, _, _)) = &self.ops {
            state.set_phase(Phase::ShuttingDown);
        }
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
        let _ = self.stop_ops.send(true);
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

/// The PostgreSQL account source of `[accounts.postgres]`, if configured, with its change feed
/// running until the sessions stop. It connects lazily: the broker starts while the database is
/// down (logins of its accounts get `<temporary-auth-failure/>` until it is back).
fn start_postgres(
    config: &Config,
    router: &Arc<Router>,
    stop: &watch::Sender<bool>,
) -> Result<Option<Arc<auth::postgres::PostgresSource>>, StartError> {
    let Some(settings) = &config.accounts.postgres else {
        return Ok(None);
    };
    let pg_config = auth::postgres::connection_config(config)?;
    let source = auth::postgres::PostgresSource::new(pg_config, settings)?;
    source.start_feed(router.clone(), stop.subscribe());
    Ok(Some(source))
}

/// Bind the ops listener and serve it (readiness: starting) until `stop`.
async fn start_ops(
    config: &Config,
    sources: Sources,
    stop: watch::Receiver<bool>,
) -> Result<(Arc<OpsState>, Arc<ops::api::ApiState>, SocketAddr), StartError> {
    let (listener, address) = ops::http::bind(config.ops.address)
        .await
        .map_err(|source| StartError::Bind {
            address: config.ops.address,
            source,
        })?;
    let router = sources.router.clone();
    let state = Arc::new(OpsState::new(sources));
    let api_domain = config.ops.api_domain(config.domain());
    let entity = ops::api::entity::ApiEntity::start(
        &api_domain,
        router.clone(),
        context::acs_outbox_limits(&config.limits),
        stop.clone(),
    );
    let api = Arc::new(ops::api::ApiState::new(
        entity,
        router,
        load_api_tokens(config)?,
        Duration::from_millis(config.requests.timeout_ms),
    ));
    let routes = ops::http::router(state.clone()).merge(ops::api::routes(api.clone()));
    ops::http::spawn(listener, routes, stop);
    tracing::info!(%address, %api_domain, "ops listener ready (/metrics, /healthz, /readyz, /v1)");
    Ok((state, api, address))
}

/// The API's bearer tokens: inline ones and those of `api_token_file` (one per line).
fn load_api_tokens(config: &Config) -> Result<Vec<String>, StartError> {
    let mut tokens: Vec<String> = config
        .ops
        .api_tokens
        .iter()
        .map(|t| t.expose().to_string())
        .collect();
    if let Some(file) = &config.ops.api_token_file {
        let path = config.resolve(file.get_ref());
        let text = std::fs::read_to_string(&path).map_err(|e| StartError::ApiTokens {
            path: path.clone(),
            message: e.to_string(),
        })?;
        tokens.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_string),
        );
    }
    Ok(tokens)
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

fn bind(address: SocketAddr, reuse_port: bool) -> Result<TcpListener, StartError> {
    listener::bind(address, reuse_port).map_err(|source| StartError::Bind { address, source })
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
