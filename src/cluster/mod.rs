//! Cluster mode: several broker nodes behind one load balancer, joined by NATS.
//!
//! What it owns: the NATS connection, this node's presence subscriptions, the proxies through
//! which other nodes' requests enter this node's router, and the liveness of the other nodes.
//! The router stays the authority for this node's sessions and asks the cluster (through
//! [`RemoteDelivery`]) only when a JID has no session here.
//!
//! **Finding a CPE: presence without a directory.** A node holding sessions of a bare JID
//! subscribes `crb.cpe.<bare JID>` ([`subjects`]) for as long as it holds one. A request for a
//! CPE that is not local is a NATS request on that subject: NATS itself knows who is interested,
//! answers "no responders" at once when nobody is (offline, answered at once), and drops a dead
//! node's subscriptions when its TCP connection closes. No directory to keep consistent, nothing
//! to clean up: one SUB per login, one UNSUB per logout, one request plus one reply per
//! cross-node connection request the CPE answers within the ack delay (plus an ack when it is
//! slower).
//!
//! **A request across nodes.** The requester's node keeps the pending entry and deadline
//! (src/router/remote.rs). The holding node takes the request through a per-requester proxy
//! entity ([`Role::Node`], [`proxy`]): its router treats it like any ACS request (caps, outbox,
//! its own pending entry, cpe_gone, conflict). The NATS reply is the answer itself when the CPE
//! answers within the ack delay (a quarter of `cluster.ack_timeout_ms`), or the holder's
//! immediate error; otherwise an ack (naming the holder, whose loss then answers the request)
//! at the ack delay, and the answer later on the requester's inbox `crb.node.<node>.a`. Replies
//! go to `crb.node.<node>.r.<key>`, under the node's one inbox subscription; the ack timeout is a
//! sweep over the requests sent (`awaiting_reply`), not a timer per request. A node
//! that holds only other resources of that bare JID stays silent; when no reply comes within
//! `cluster.ack_timeout_ms` (nobody took it, or its taker died before acking) the request is
//! answered `service-unavailable`.
//!
//! **One session per full JID.** A node publishes `bound` (full JID, bind time) on the CPE's
//! subject before it subscribes (and NATS does not echo a node's own messages back): a node
//! holding an older session for that full JID closes it with `<conflict/>`. For a bare-JID
//! request only the node with the most recent session answers.
//!
//! **Failures.** Heartbeats (`crb.hb.<node>`) every `cluster.heartbeat_ms`; a node silent for
//! `cluster.node_timeout_ms` is lost and the requests it took are answered `service-unavailable`
//! ([`node`]). Without a NATS connection a request is answered at once (the client's state is
//! checked before anything is sent, so nothing is buffered during a disconnect), and when the
//! connection drops every request waiting on another node is answered. The client reconnects by
//! itself and re-sends every subscription, which rebuilds presence.
//!
//! **Bounds.** Every subscription's queue is `SUBSCRIPTION_CAPACITY` messages; when full, NATS
//! drops what arrives (counted, and the requester's deadline answers the request). Pending
//! requests are bounded by the pending table's caps; `awaiting_reply` holds 16 bytes per request
//! sent in the last `cluster.ack_timeout_ms`. A request is handed to the NATS client's command
//! queue without waiting: when that queue is full, it is answered `service-unavailable` at once.

pub mod subjects;
pub mod wire;

mod inbound;
mod node;
mod presence;
mod proxy;

use crate::config::{ClusterConfig, Config};
use crate::jid::JidRef;
use crate::ops::metrics::Stats;
use crate::outbox::OutboxLimits;
use crate::router::{RemoteDelivery, RemoteUnavailable, Router};
use crate::session::{Role, SessionHandle};
use crate::xml::{Element, FramerLimits};
use async_nats::connection::State;
use dashmap::DashMap;
use futures_util::FutureExt;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use wire::{Header, Kind};

/// Messages one subscription may queue before NATS drops what arrives for it.
const SUBSCRIPTION_CAPACITY: usize = 8192;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cluster.servers: {server:?}: {message}")]
    Server { server: String, message: String },
    #[error("cluster.credentials_file {path}: {source}")]
    Credentials {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start the NATS client: {0}")]
    Connect(String),
}

/// The cluster: this node's NATS client and what its tasks share.
pub struct Cluster {
    /// Itself, for the tasks a `&self` call spawns.
    me: Weak<Cluster>,
    node: String,
    /// Random per process, in heartbeats: tells a restarted node from the run before it.
    incarnation: u64,
    inbox: String,
    client: async_nats::Client,
    /// Weak: the router holds this (as its RemoteDelivery); a strong reference would be a cycle.
    router: Weak<Router>,
    stats: Arc<Stats>,
    ack_timeout: Duration,
    node_timeout: Duration,
    heartbeat: Duration,
    /// Limits for stanzas that arrive from other nodes (the same as a connection's).
    framer_limits: FramerLimits,
    /// Outbox bounds of a proxy (those of an ACS connection).
    proxy_limits: OutboxLimits,
    peers: node::Peers,
    /// Bare JIDs with sessions here, and their subscription tasks.
    presence: DashMap<String, presence::Held>,
    /// ACS entities attached here, and their queue-subscription tasks.
    acs: DashMap<String, tokio::task::AbortHandle>,
    /// Requests sent to other nodes and awaiting their reply, with the time after which they are
    /// answered `service-unavailable` (in sending order, so the deadlines are in order too).
    /// Drained every sweep; at most the requests of the last `cluster.ack_timeout_ms`.
    awaiting_reply: Mutex<VecDeque<(Instant, u64)>>,
    /// One proxy per node that sends us requests.
    proxies: Mutex<HashMap<String, Arc<proxy::Proxy>>>,
    next_proxy_conn: AtomicU64,
    stop: watch::Receiver<bool>,
}

/// Connect to NATS (in the background: the broker starts without NATS and answers requests for
/// other nodes with errors until it is connected) and install the cluster into the router.
pub async fn start(
    config: &Config,
    cluster: &ClusterConfig,
    router: &Arc<Router>,
    stop: watch::Receiver<bool>,
) -> Result<Arc<Cluster>, ClusterError> {
    let node = cluster
        .node
        .as_ref()
        .map(|n| n.get_ref().clone())
        .unwrap_or_else(subjects::default_node_name);
    let servers = cluster
        .servers
        .get_ref()
        .iter()
        .map(|s| {
            s.parse::<async_nats::ServerAddr>()
                .map_err(|e| ClusterError::Server {
                    server: s.clone(),
                    message: e.to_string(),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut options = async_nats::ConnectOptions::new()
        .name(format!("crbroker {node}"))
        .no_echo()
        .retry_on_initial_connect()
        .max_reconnects(None)
        .subscription_capacity(SUBSCRIPTION_CAPACITY)
        .connection_timeout(Duration::from_secs(2))
        // Reconnect fast after a NATS restart: presence comes back with the subscriptions.
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis((attempts as u64 * 100).clamp(100, 2000))
        })
        .require_tls(cluster.tls_required)
        .event_callback(events(Arc::downgrade(router), router.stats.clone()));
    if let (Some(user), Some(password)) = (&cluster.user, &cluster.password) {
        options = options.user_and_password(user.clone(), password.expose().to_string());
    }
    if let Some(token) = &cluster.token {
        options = options.token(token.expose().to_string());
    }
    if let Some(file) = &cluster.credentials_file {
        let path = config.resolve(file.get_ref());
        options = options
            .credentials_file(&path)
            .await
            .map_err(|source| ClusterError::Credentials { path, source })?;
    }
    if let Some(ca) = &cluster.tls_ca {
        options = options.add_root_certificates(config.resolve(ca.get_ref()));
    }
    if let (Some(cert), Some(key)) = (&cluster.tls_cert, &cluster.tls_key) {
        options = options.add_client_certificate(
            config.resolve(cert.get_ref()),
            config.resolve(key.get_ref()),
        );
    }
    let client = options
        .connect(servers)
        .await
        .map_err(|e| ClusterError::Connect(e.to_string()))?;
    let limits = &config.limits;
    let shared = Arc::new_cyclic(|me| Cluster {
        me: me.clone(),
        incarnation: incarnation(),
        inbox: subjects::node_inbox(&node),
        node,
        client,
        router: Arc::downgrade(router),
        stats: router.stats.clone(),
        ack_timeout: Duration::from_millis(cluster.ack_timeout_ms),
        node_timeout: Duration::from_millis(cluster.node_timeout_ms),
        heartbeat: Duration::from_millis(cluster.heartbeat_ms),
        framer_limits: FramerLimits {
            max_stanza_bytes: limits.max_stanza_bytes,
            max_depth: limits.max_depth,
            max_attributes: limits.max_attributes,
            max_header_bytes: limits.max_header_bytes,
            max_nodes: limits.max_elements,
        },
        proxy_limits: crate::context::acs_outbox_limits(limits),
        peers: node::Peers::default(),
        presence: DashMap::new(),
        acs: DashMap::new(),
        awaiting_reply: Mutex::new(VecDeque::new()),
        proxies: Mutex::new(HashMap::new()),
        next_proxy_conn: AtomicU64::new(PROXY_CONN_TOP),
        stop,
    });
    tokio::spawn(inbound::node_inbox(shared.clone()));
    tokio::spawn(node::heartbeats(shared.clone()));
    tokio::spawn(sweeps(shared.clone()));
    tracing::info!(node = %shared.node, servers = ?cluster.servers.get_ref(), "cluster mode: NATS client started");
    router.set_remote(shared.clone());
    Ok(shared)
}

/// How often the sweeps run, as a fraction of the ack delay.
const SWEEPS_PER_ACK_DELAY: u32 = 4;

/// The cluster's timers: acks this node owes as a holder ([`proxy::ack_due`]) and replies
/// overdue to it as a requester ([`inbound::expire_unreplied`]).
async fn sweeps(shared: Arc<Cluster>) {
    let every = (shared.ack_delay() / SWEEPS_PER_ACK_DELAY).max(Duration::from_millis(1));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut stop = shared.stop.clone();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = crate::context::stopped(&mut stop) => return,
        }
        proxy::ack_due(&shared).await;
        inbound::expire_unreplied(&shared);
    }
}

/// A random non-zero number for this process's heartbeats (the time when randomness fails).
fn incarnation() -> u64 {
    let mut random = [0u8; 8];
    if getrandom::getrandom(&mut random).is_err() {
        random = wire::now_micros().to_le_bytes();
    }
    u64::from_le_bytes(random).max(1)
}

/// Connection ids of proxies count down from here, below the HTTP API's entity.
const PROXY_CONN_TOP: u64 = u64::MAX - 1024;

/// What the NATS client reports: a lost connection answers every request waiting on another
/// node (no relayed answer can arrive any more).
fn events(
    router: Weak<Router>,
    stats: Arc<Stats>,
) -> impl Fn(async_nats::Event) -> std::future::Ready<()> + Send + Sync + 'static {
    move |event| {
        match event {
            async_nats::Event::Disconnected => {
                stats.cluster_connected.store(0, Ordering::Relaxed);
                tracing::warn!("cluster: NATS connection lost; requests for other nodes are answered service-unavailable until it is back");
                if let Some(router) = router.upgrade() {
                    router.remote_all_lost();
                }
            }
            async_nats::Event::Connected => {
                stats.cluster_connected.store(1, Ordering::Relaxed);
                tracing::info!("cluster: connected to NATS");
            }
            async_nats::Event::SlowConsumer(sid) => {
                Stats::bump(&stats.cluster_messages_dropped);
                tracing::warn!(
                    sid,
                    "cluster: a subscription's queue is full, NATS dropped a message"
                );
            }
            other => tracing::info!("cluster: NATS {other}"),
        }
        std::future::ready(())
    }
}

impl Cluster {
    fn connected(&self) -> bool {
        self.client.connection_state() == State::Connected
    }

    /// How long a taken request may go without a reply before it is acked: within it, the
    /// CPE's answer is the reply (see [`proxy`]). A quarter of the requester's ack timeout
    /// leaves room for the sweep and a loaded NATS path.
    fn ack_delay(&self) -> Duration {
        self.ack_timeout / 4
    }

    fn awaiting_reply(&self) -> std::sync::MutexGuard<'_, VecDeque<(Instant, u64)>> {
        self.awaiting_reply
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn router(&self) -> Option<Arc<Router>> {
        self.router.upgrade()
    }

    /// Publish in the background (presence events, answers): nothing waits for NATS, and
    /// nothing is queued while the connection is down.
    fn publish(&self, subject: String, payload: bytes::Bytes) -> bool {
        if !self.connected() {
            return false;
        }
        let client = self.client.clone();
        tokio::spawn(async move {
            if let Err(e) = client.publish(subject, payload).await {
                tracing::debug!("cluster publish failed: {e}");
            }
        });
        true
    }

    fn header<'a>(&'a self, kind: Kind, jid: &'a str, stamp: u64) -> Header<'a> {
        Header {
            kind,
            node: &self.node,
            jid,
            stamp,
        }
    }
}

impl RemoteDelivery for Cluster {
    fn request(&self, key: u64, to: &JidRef, request: Element) -> Result<(), RemoteUnavailable> {
        if !self.connected() {
            return Err(RemoteUnavailable);
        }
        let subject = subjects::cpe(&to.bare());
        let reply = subjects::reply(&self.node, key);
        let payload = wire::encode(self.header(Kind::Request, "", 0), Some(&request));
        self.awaiting_reply()
            .push_back((Instant::now() + self.ack_timeout, key));
        // Queued for the NATS client's connection task without waiting: when its command queue
        // (client_capacity) is full, NATS is behind and the request is answered at once.
        // Unconstrained: tokio's cooperative budget must not make a free queue look full.
        let publish = self.client.publish_with_reply(subject, reply, payload);
        match tokio::task::unconstrained(publish).now_or_never() {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => {
                tracing::debug!("cluster: request not sent: {e}");
                Err(RemoteUnavailable)
            }
            None => Err(RemoteUnavailable),
        }
    }

    fn newer_elsewhere(&self, bare: &str) -> bool {
        presence::newer_elsewhere(self, bare)
    }

    fn forward_to_cpe(&self, to: &JidRef, stanza: Element) {
        let payload = wire::encode(self.header(Kind::Stanza, "", 0), Some(&stanza));
        if !self.publish(subjects::cpe(&to.bare()), payload) {
            Stats::bump(&self.stats.stanzas_refused);
        }
    }

    fn forward_to_acs(&self, address: &str, stanza: Element) -> Result<(), Element> {
        if !self.connected() {
            return Err(stanza);
        }
        let payload = wire::encode(self.header(Kind::Stanza, "", 0), Some(&stanza));
        self.publish(subjects::acs(address), payload);
        Ok(())
    }

    fn bound(&self, bare: &str, session: &Arc<SessionHandle>, _replaced: bool) {
        match session.role {
            Role::Cpe => presence::cpe_bound(self, bare, &session.jid),
            Role::AcsAccount => self.acs_attached(bare),
            Role::Component | Role::Node => {}
        }
    }

    fn unbound(&self, bare: &str, session: &Arc<SessionHandle>, last: bool) {
        match session.role {
            Role::Cpe => presence::cpe_unbound(self, bare, &session.jid, last),
            Role::AcsAccount if last => self.acs_detached(bare),
            _ => {}
        }
    }

    fn acs_attached(&self, address: &str) {
        presence::acs_attached(self, address);
    }

    fn acs_detached(&self, address: &str) {
        if let Some((_, task)) = self.acs.remove(address) {
            task.abort();
        }
    }
}
