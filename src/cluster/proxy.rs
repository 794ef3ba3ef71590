//! Proxies: the entity through which one requester node's requests and stanzas enter this node's
//! router, and what this node still owes that node for its requests.
//!
//! A proxy looks to the router like an ACS connection ([`Role::Node`]): the router applies its
//! caps, keeps its own pending entry toward the CPE and puts the one answer in the proxy's outbox.
//! [`relay_answers`] drains that outbox toward the requester.
//!
//! **One reply instead of ack + answer.** A request arrives as a NATS request whose reply the
//! requester waits for (up to `cluster.ack_timeout_ms`). When the CPE answers within the ack delay
//! (a quarter of that timeout), its answer *is* the reply: two NATS messages per cross-node
//! request, not three. A request still unanswered after the ack delay is acked ([`acks`]); its
//! answer then goes to the requester's inbox `crb.node.<node>.a`. A node that dies before acking is
//! noticed by the requester's ack timeout, after acking by its missing heartbeats.

use super::{subjects, wire, Cluster};
use crate::ops::metrics::Stats;
use crate::outbox::{Outbox, Outgoing};
use crate::session::{Role, SessionHandle, SessionInfo};
use async_nats::Subject;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;
use wire::Kind;

/// The proxy of one requester node.
pub(super) struct Proxy {
    pub handle: Arc<SessionHandle>,
    /// The requester's requests taken here and not yet answered or acked, by request id (the
    /// requester's broker id): where the NATS reply goes, and since when it is owed.
    owed: Mutex<HashMap<Box<str>, (Subject, Instant)>>,
}

impl Proxy {
    fn owed(&self) -> MutexGuard<'_, HashMap<Box<str>, (Subject, Instant)>> {
        self.owed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Request `id` was taken; its reply goes to `reply`.
    pub fn owe_reply(&self, id: &str, reply: Subject) {
        self.owed().insert(id.into(), (reply, Instant::now()));
    }

    /// The reply subject of request `id`, if its reply is still owed (it is no longer).
    pub fn take_reply(&self, id: &str) -> Option<Subject> {
        self.owed().remove(id).map(|(reply, _)| reply)
    }

    /// Reply subjects of the requests owed since before `cutoff` (they are no longer owed).
    fn take_due(&self, cutoff: Instant) -> Vec<Subject> {
        let mut due = Vec::new();
        self.owed().retain(|_, (reply, since)| {
            let keep = *since > cutoff;
            if !keep {
                due.push(reply.clone());
            }
            keep
        });
        due
    }
}

/// The proxy of `node` (created on first use, again after its outbox closed).
pub(super) fn proxy(shared: &Arc<Cluster>, node: &str) -> Arc<Proxy> {
    let mut proxies = shared.proxies.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(proxy) = proxies.get(node) {
        return proxy.clone();
    }
    let proxy = Arc::new(Proxy {
        handle: Arc::new(SessionHandle {
            conn_id: shared.next_proxy_conn.fetch_sub(1, Ordering::Relaxed),
            jid: node.to_string(),
            role: Role::Node,
            outbox: Outbox::new(shared.proxy_limits),
            info: SessionInfo::new(None),
        }),
        owed: Mutex::new(HashMap::new()),
    });
    proxies.insert(node.to_string(), proxy.clone());
    tokio::spawn(relay_answers(
        shared.clone(),
        node.to_string(),
        proxy.clone(),
    ));
    proxy
}

/// Drain a proxy's outbox: each answer is the reply of its NATS request while that is owed,
/// else it goes to the requester's inbox.
async fn relay_answers(shared: Arc<Cluster>, node: String, proxy: Arc<Proxy>) {
    let inbox = Subject::from(subjects::answers(&node));
    let mut stop = shared.stop.clone();
    loop {
        while let Some(item) = proxy.handle.outbox.pop() {
            let answer = match item {
                Outgoing::Stanza(answer) => answer,
                Outgoing::Close(_) => {
                    // The requester stopped taking answers (room full): start afresh.
                    let mut proxies = shared.proxies.lock().unwrap_or_else(|e| e.into_inner());
                    if proxies.get(&node).is_some_and(|p| Arc::ptr_eq(p, &proxy)) {
                        proxies.remove(&node);
                    }
                    drop(proxies);
                    proxy.handle.seal(&shared.stats);
                    return;
                }
            };
            let reply = answer.attr("id").and_then(|id| proxy.take_reply(id));
            let payload = wire::encode(shared.header(Kind::Answer, "", 0), Some(&answer));
            if !shared.connected() {
                // The requester answers it (its NATS connection or our heartbeats are gone too).
                Stats::bump(&shared.stats.cluster_messages_dropped);
                continue;
            }
            let subject = reply.unwrap_or_else(|| inbox.clone());
            match shared.client.publish(subject, payload).await {
                Ok(()) => Stats::bump(&shared.stats.cluster_answers_relayed),
                Err(_) => Stats::bump(&shared.stats.cluster_messages_dropped),
            }
        }
        tokio::select! {
            _ = proxy.handle.outbox.notified() => {}
            _ = crate::context::stopped(&mut stop) => return,
        }
    }
}

/// Ack every request still unanswered after the ack delay, so that its requester stops waiting
/// for a reply and ties it to this node (whose loss then answers it).
pub(super) async fn ack_due(shared: &Arc<Cluster>) {
    let Some(cutoff) = Instant::now().checked_sub(shared.ack_delay()) else {
        return;
    };
    let proxies: Vec<Arc<Proxy>> = {
        let proxies = shared.proxies.lock().unwrap_or_else(|e| e.into_inner());
        proxies.values().cloned().collect()
    };
    for proxy in proxies {
        for reply in proxy.take_due(cutoff) {
            if !shared.connected() {
                return;
            }
            let ack = wire::encode(shared.header(Kind::Ack, "", 0), None);
            match shared.client.publish(reply, ack).await {
                Ok(()) => Stats::bump(&shared.stats.cluster_requests_acked),
                Err(e) => tracing::debug!("cluster: ack not sent: {e}"),
            }
        }
    }
}
