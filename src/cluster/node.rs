//! Liveness of the other nodes: who was heard from when, and which node is lost.
//!
//! Every node publishes a heartbeat each `cluster.heartbeat_ms`; an ack also counts as a sign of
//! life. A node not heard from for `cluster.node_timeout_ms` is lost: the requests it took are
//! answered at once (`service-unavailable`), from the pending table's entries under its
//! synthetic connection (`REMOTE_NODE_CONN + index`). A lost node that speaks again is alive
//! again under the same index. The table grows by one small entry per node name ever heard
//! (node names default to host name and process id: one per incarnation).
//!
//! A heartbeat carries the sender's incarnation (random per process): a node restarted under a
//! configured name within `node_timeout_ms` is seen as a new incarnation, and what the old one
//! held is answered at once instead of at the requests' deadlines.

use super::{subjects, Cluster};
use crate::ops::metrics::Stats;
use crate::pending::REMOTE_NODE_CONN;
use futures_util::{FutureExt, StreamExt};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often silent nodes are looked for: a lost node is declared at most this long after
/// `cluster.node_timeout_ms` of silence.
pub const LOSS_CHECK: Duration = Duration::from_millis(100);

/// Publish this node's heartbeat, hear the others', and answer what lost nodes held.
pub(super) async fn heartbeats(shared: Arc<Cluster>) {
    let mut subscriber = match shared.client.subscribe(subjects::HEARTBEATS).await {
        Ok(subscriber) => subscriber,
        Err(e) => {
            tracing::error!("cluster: cannot subscribe heartbeats: {e}");
            return;
        }
    };
    let own = subjects::heartbeat(&shared.node);
    let incarnation = bytes::Bytes::from(shared.incarnation.to_string());
    let mut beat = tokio::time::interval(shared.heartbeat);
    let mut check = tokio::time::interval(LOSS_CHECK);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut stop = shared.stop.clone();
    loop {
        tokio::select! {
            _ = beat.tick() => {
                shared.publish(own.clone(), incarnation.clone());
            }
            _ = check.tick() => {
                // Heartbeats delivered but not yet taken (this task waited for a core) count
                // before anyone is judged silent.
                while let Some(Some(message)) = subscriber.next().now_or_never() {
                    on_heartbeat(&shared, &message);
                }
                let lost = shared.peers.lost(Instant::now(), shared.node_timeout);
                if lost.is_empty() {
                    continue;
                }
                let Some(router) = shared.router() else { return };
                for (node, conn) in lost {
                    Stats::bump(&shared.stats.cluster_nodes_lost);
                    tracing::warn!(%node, "cluster node lost (no heartbeat): answering the requests it held");
                    router.cpe_gone(conn);
                }
            }
            message = subscriber.next() => {
                let Some(message) = message else { return };
                on_heartbeat(&shared, &message);
            }
            _ = crate::context::stopped(&mut stop) => return,
        }
    }
}

/// Another node's heartbeat: it lives; a new run of it ends what the previous run held.
fn on_heartbeat(shared: &Cluster, message: &async_nats::Message) {
    let Some(node) = subjects::heartbeat_node(&message.subject) else {
        return;
    };
    if node == shared.node {
        return;
    }
    let incarnation = std::str::from_utf8(&message.payload)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    if let Some(conn) = shared.peers.heartbeat(node, incarnation, Instant::now()) {
        Stats::bump(&shared.stats.cluster_nodes_lost);
        tracing::warn!(%node, "cluster node restarted: answering the requests its previous run held");
        if let Some(router) = shared.router() {
            router.cpe_gone(conn);
        }
    }
}

#[derive(Default)]
pub struct Peers {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    by_name: HashMap<String, usize>,
    peers: Vec<Peer>,
}

struct Peer {
    name: String,
    last_seen: Instant,
    alive: bool,
    /// From its heartbeats; 0 until one arrives.
    incarnation: u64,
}

impl Peers {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `name` gave a sign of life at `now`; returns its synthetic connection id.
    pub fn seen(&self, name: &str, now: Instant) -> u64 {
        let mut inner = self.lock();
        let index = match inner.by_name.get(name) {
            Some(&index) => index,
            None => {
                let index = inner.peers.len();
                inner.by_name.insert(name.to_string(), index);
                inner.peers.push(Peer {
                    name: name.to_string(),
                    last_seen: now,
                    alive: true,
                    incarnation: 0,
                });
                index
            }
        };
        let peer = &mut inner.peers[index];
        if !peer.alive {
            tracing::info!(node = %peer.name, "cluster node is back");
        }
        peer.last_seen = now;
        peer.alive = true;
        REMOTE_NODE_CONN + index as u64
    }

    /// A heartbeat of `name`'s run `incarnation`: like [`Peers::seen`]; returns the node's
    /// connection id when it comes from a new run of a node whose previous run was alive (what
    /// that run held is gone).
    pub fn heartbeat(&self, name: &str, incarnation: u64, now: Instant) -> Option<u64> {
        let conn = self.seen(name, now);
        let mut inner = self.lock();
        let peer = &mut inner.peers[(conn - REMOTE_NODE_CONN) as usize];
        let restarted = peer.incarnation != 0 && peer.incarnation != incarnation;
        peer.incarnation = incarnation;
        restarted.then_some(conn)
    }

    /// Nodes silent for `timeout` as of `now` that were alive: each is reported once, with its
    /// synthetic connection id.
    pub fn lost(&self, now: Instant, timeout: Duration) -> Vec<(String, u64)> {
        let mut inner = self.lock();
        let mut lost = Vec::new();
        for (index, peer) in inner.peers.iter_mut().enumerate() {
            if peer.alive && now.saturating_duration_since(peer.last_seen) >= timeout {
                peer.alive = false;
                lost.push((peer.name.clone(), REMOTE_NODE_CONN + index as u64));
            }
        }
        lost
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_silent_node_is_lost_once_and_comes_back_under_its_id() {
        let peers = Peers::default();
        let t0 = Instant::now();
        let a = peers.seen("a", t0);
        let b = peers.seen("b", t0);
        assert_ne!(a, b);
        let timeout = Duration::from_secs(3);
        assert!(peers.lost(t0 + Duration::from_secs(2), timeout).is_empty());
        peers.seen("b", t0 + Duration::from_secs(2));
        let lost = peers.lost(t0 + Duration::from_secs(3), timeout);
        assert_eq!(lost, vec![("a".to_string(), a)]);
        assert!(peers.lost(t0 + Duration::from_secs(4), timeout).is_empty());
        assert_eq!(peers.seen("a", t0 + Duration::from_secs(5)), a);
    }

    #[test]
    fn a_new_run_under_the_same_name_ends_the_old_one() {
        let peers = Peers::default();
        let t0 = Instant::now();
        assert_eq!(peers.heartbeat("a", 11, t0), None);
        assert_eq!(peers.heartbeat("a", 11, t0), None);
        let conn = peers.seen("a", t0);
        assert_eq!(peers.heartbeat("a", 12, t0), Some(conn));
        assert_eq!(peers.heartbeat("a", 12, t0), None);
    }
}
