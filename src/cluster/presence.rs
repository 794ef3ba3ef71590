//! This node's presence in the cluster: one NATS subscription per bare JID it holds sessions of
//! (`crb.cpe.<bare>`), one queue subscription per ACS entity attached here (`crb.acs.<address>`),
//! and the `bound`/`unbound` events that keep one session per full JID cluster-wide.
//!
//! Each subscription is one small task that owns its `Subscriber`: aborting the task drops the
//! subscriber, which unsubscribes. The map entry (and so the task) lives from the first session
//! of a bare JID to the end of its last. Calls come from the router under its lock for that JID,
//! so a bind and the unbind after it are seen in order; nothing here calls back into the router
//! while holding a map entry.

use super::{inbound, subjects, wire, Cluster};
use crate::jid::JidRef;
use crate::router::Router;
use dashmap::mapref::entry::Entry;
use futures_util::StreamExt;
use std::sync::Arc;
use wire::Kind;

/// The sessions of one bare JID on this node.
pub(super) struct Held {
    /// Full JID and bind stamp (microseconds since the epoch) of each session here.
    sessions: Vec<(String, u64)>,
    /// The newest bind stamp another node announced for this bare JID (0: none known), for
    /// bare-JID requests: only the node with the most recent session takes them.
    newest_elsewhere: u64,
    task: tokio::task::AbortHandle,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A CPE session for `full` was bound here.
pub(super) fn cpe_bound(shared: &Cluster, bare: &str, full: &str) {
    let stamp = wire::now_micros();
    let event = wire::encode(shared.header(Kind::Bound, full, stamp), None);
    let subject = subjects::cpe(bare);
    match shared.presence.entry(bare.to_string()) {
        Entry::Occupied(mut entry) => {
            let held = entry.get_mut();
            held.sessions.retain(|(jid, _)| jid != full);
            held.sessions.push((full.to_string(), stamp));
            shared.publish(subject, event);
        }
        Entry::Vacant(entry) => {
            let Some(me) = shared.me.upgrade() else {
                return;
            };
            let task = tokio::spawn(watch_cpe(me, subject, event));
            entry.insert(Held {
                sessions: vec![(full.to_string(), stamp)],
                newest_elsewhere: 0,
                task: task.abort_handle(),
            });
        }
    }
}

/// A CPE session for `full` ended here (`last`: the bare JID has no other session here).
pub(super) fn cpe_unbound(shared: &Cluster, bare: &str, full: &str, last: bool) {
    let mut stamp = None;
    shared.presence.remove_if_mut(bare, |_, held| {
        if let Some(i) = held.sessions.iter().position(|(jid, _)| jid == full) {
            stamp = Some(held.sessions.remove(i).1);
        }
        last || held.sessions.is_empty()
    });
    if let Some(stamp) = stamp {
        let event = wire::encode(shared.header(Kind::Unbound, full, stamp), None);
        shared.publish(subjects::cpe(bare), event);
    }
}

/// Announce the bind, subscribe, then take what arrives. This task idles for as long as the
/// CPE is online, once per CPE: the work around each await is boxed so that the idle task holds
/// only the subscriber.
async fn watch_cpe(shared: Arc<Cluster>, subject: String, bound_event: bytes::Bytes) {
    let Some(mut subscriber) = Box::pin(announce(&shared, subject, bound_event)).await else {
        return;
    };
    while let Some(message) = subscriber.next().await {
        Box::pin(inbound::on_cpe_message(&shared, message)).await;
    }
}

/// Publish the `bound` event, then subscribe: NATS does not echo our own event back (no_echo),
/// and a node holding an older session for the same full JID closes it.
async fn announce(
    shared: &Cluster,
    subject: String,
    bound_event: bytes::Bytes,
) -> Option<async_nats::Subscriber> {
    if shared.connected() {
        if let Err(e) = shared.client.publish(subject.clone(), bound_event).await {
            tracing::debug!("cluster: bound event not sent: {e}");
        }
    }
    match shared.client.subscribe(subject).await {
        Ok(subscriber) => Some(subscriber),
        Err(e) => {
            tracing::warn!("cluster: cannot subscribe a CPE's subject: {e}");
            None
        }
    }
}

/// Whether this node should take a request for `to`: it has the session (a full JID), or the
/// most recent session of the cluster (a bare JID). A session that is closing (replaced by a
/// newer login on another node, which takes the request) does not count.
pub(super) fn holds(shared: &Cluster, router: &Router, to: &JidRef) -> bool {
    if router
        .sessions_of(to)
        .iter()
        .all(|session| session.outbox.is_closed())
    {
        return false;
    }
    to.resource.is_some() || !newer_elsewhere(shared, &to.bare())
}

/// Whether another node announced a session of `bare` more recent than every one here.
pub(super) fn newer_elsewhere(shared: &Cluster, bare: &str) -> bool {
    shared.presence.get(bare).is_some_and(|held| {
        let newest_here = held.sessions.iter().map(|(_, s)| *s).max().unwrap_or(0);
        held.newest_elsewhere > newest_here
    })
}

/// Another node bound `full` at `stamp`: an older session here for the same full JID gets
/// `<conflict/>`.
pub(super) fn remote_bound(shared: &Cluster, router: &Router, node: &str, full: &str, stamp: u64) {
    let Ok(jid) = JidRef::parse(full) else {
        return;
    };
    let older_here = match shared.presence.get_mut(jid.bare().as_ref()) {
        Some(mut held) => {
            held.newest_elsewhere = held.newest_elsewhere.max(stamp);
            held.sessions.iter().any(|(j, s)| j == full && *s < stamp)
        }
        None => false,
    };
    if older_here && router.replaced_elsewhere(full) {
        tracing::info!(jid = %full, %node, "session replaced by a newer login on another node");
    }
}

/// Another node's session of `full` (bound at `stamp`) ended.
pub(super) fn remote_unbound(shared: &Cluster, full: &str, stamp: u64) {
    let Ok(jid) = JidRef::parse(full) else {
        return;
    };
    if let Some(mut held) = shared.presence.get_mut(jid.bare().as_ref()) {
        if held.newest_elsewhere == stamp {
            held.newest_elsewhere = 0;
        }
    }
}

/// The first connection of an ACS entity (component domain, ACS account bare JID) is here.
pub(super) fn acs_attached(shared: &Cluster, address: &str) {
    if let Entry::Vacant(entry) = shared.acs.entry(address.to_string()) {
        let Some(me) = shared.me.upgrade() else {
            return;
        };
        let task = tokio::spawn(watch_acs(me, subjects::acs(address)));
        entry.insert(task.abort_handle());
    }
}

/// One queue group for every node's connections of an ACS entity: NATS hands each stanza to one.
async fn watch_acs(shared: Arc<Cluster>, subject: String) {
    let queue = subjects::ACS_QUEUE.to_string();
    let mut subscriber = match shared.client.queue_subscribe(subject, queue).await {
        Ok(subscriber) => subscriber,
        Err(e) => {
            tracing::warn!("cluster: cannot subscribe an ACS subject: {e}");
            return;
        }
    };
    while let Some(message) = subscriber.next().await {
        inbound::on_acs_message(&shared, message);
    }
}
