//! The router's side of cluster mode: the [`RemoteDelivery`] trait the cluster implements, and the
//! router methods that send requests to other nodes and take their answers back.
//!
//! A request for a CPE that has no session here gets its pending entry here first (so this node
//! keeps the deadline and the one answer), carrying its broker id toward the CPE, and is then
//! handed to the cluster. Whatever comes back (the CPE's answer, the holding node's own error, no
//! node at all, a lost node, a lost NATS connection) takes the entry out of the table once; a
//! second or late answer finds nothing and is counted as late.

use super::requests::Asked;
use super::Router;
use crate::jid::JidRef;
use crate::ops::metrics::{CrOutcome, Stats};
use crate::pending::{PendingRequest, WireId, REMOTE_UNACKED_CONN};
use crate::proto::stanza::ErrorType;
use crate::session::{Role, SessionHandle};
use crate::xml::Element;
use std::sync::Arc;
use std::time::Instant;

/// The cluster could not take a stanza now (no NATS connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the cluster is unavailable (no NATS connection)")]
pub struct RemoteUnavailable;

/// Where the router sends what has no session on this node. Every call returns at once: the
/// implementation spawns or queues its I/O. Presence calls are made under the router's lock for
/// that JID or domain, so they arrive in order and must not call back into the router.
pub trait RemoteDelivery: Send + Sync {
    /// Send pending request `key` (its id already the broker id) to the node holding `to`.
    fn request(&self, key: u64, to: &JidRef, request: Element) -> Result<(), RemoteUnavailable>;
    /// Whether another node announced a more recent session of bare JID `bare` than any here
    /// (a bare-JID request goes to the most recent session cluster-wide).
    fn newer_elsewhere(&self, bare: &str) -> bool;
    /// A stanza for a CPE on another node; nothing is answered.
    fn forward_to_cpe(&self, to: &JidRef, stanza: Element);
    /// A stanza for an ACS entity (component domain or ACS account bare JID) attached elsewhere.
    fn forward_to_acs(&self, address: &str, stanza: Element) -> Result<(), Element>;
    /// A client session was bound here (`replaced`: it replaced one with the same full JID).
    fn bound(&self, bare: &str, session: &Arc<SessionHandle>, replaced: bool);
    /// A client session ended here (`last`: no other session of `bare` is left).
    fn unbound(&self, bare: &str, session: &Arc<SessionHandle>, last: bool);
    /// The first connection of a component domain attached here.
    fn acs_attached(&self, domain: &str);
    /// The last connection of a component domain detached from here.
    fn acs_detached(&self, domain: &str);
}

impl Router {
    /// Install the cluster (once, at start, before any connection is accepted).
    pub fn set_remote(&self, remote: Arc<dyn RemoteDelivery>) {
        let _ = self.remote.set(remote);
    }

    pub fn is_clustered(&self) -> bool {
        self.remote.get().is_some()
    }

    /// The cluster, when `sender`'s stanzas may go there: never for what a peer node sent us
    /// (it already asked the whole cluster).
    pub(super) fn remote_for(&self, sender: &SessionHandle) -> Option<&Arc<dyn RemoteDelivery>> {
        match sender.role {
            Role::Node => None,
            _ => self.remote.get(),
        }
    }

    /// ACS -> CPE request for a CPE with no session here: keep it pending, send it out.
    pub(super) fn relay_remote(
        &self,
        remote: &Arc<dyn RemoteDelivery>,
        acs: &Arc<SessionHandle>,
        mut request: Element,
        to: &JidRef,
        started: Instant,
    ) -> Option<Element> {
        let acs_jid = request.attr("from").unwrap_or_default().to_string();
        let acs_id = request.attr("id").unwrap_or_default().to_string();
        let cpe_jid = to.normalized();
        let entry = PendingRequest {
            acs: acs.clone(),
            acs_jid: acs_jid.clone(),
            acs_id: acs_id.clone(),
            wire: WireId::Acs,
            cpe_conn: REMOTE_UNACKED_CONN,
            cpe_jid: cpe_jid.clone(),
            started,
        };
        let asked = Asked {
            acs_jid: &acs_jid,
            acs_id: &acs_id,
            cpe_jid: &cpe_jid,
            started,
        };
        let Ok(key) = self.pending.begin_remote(entry) else {
            return Some(self.refuse(
                &asked,
                CrOutcome::Overload,
                "overload (acs)",
                "resource-constraint",
                ErrorType::Wait,
            ));
        };
        request.set_attr("id", self.pending.broker_id(key));
        match remote.request(key, to, request) {
            Ok(()) => {
                Stats::bump(&self.stats.cluster_requests_sent);
                None
            }
            Err(RemoteUnavailable) => {
                self.pending.cancel(key)?;
                Stats::bump(&self.stats.cluster_unavailable);
                Some(self.refuse(
                    &asked,
                    CrOutcome::Offline,
                    "cluster unavailable",
                    "service-unavailable",
                    ErrorType::Cancel,
                ))
            }
        }
    }

    /// The one answer a peer node relayed for one of our remote requests (the CPE's, or that
    /// node's own error). False when it answers nothing pending (late or duplicate).
    pub fn remote_answer(&self, answer: Element) -> bool {
        let request = answer
            .attr("id")
            .and_then(|id| self.pending.complete_remote(id));
        match request {
            Some(request) => {
                Stats::bump(&self.stats.cluster_answers_received);
                self.answer_with(request, answer);
                true
            }
            None => {
                Stats::bump(&self.stats.answers_late_or_unknown);
                false
            }
        }
    }

    /// Remote request `key` cannot be delivered (no node holds the CPE, NATS failed): answer it
    /// `service-unavailable` unless it was answered already.
    pub fn remote_undeliverable(&self, key: u64, outcome: &str) {
        if let Some(request) = self.pending.cancel(key) {
            self.answer_remote_offline(request, outcome);
        }
    }

    /// Remote request `key` got no reply within the ack timeout: no node took it (the session
    /// went away meanwhile, or its node died before acking). Answered `service-unavailable`
    /// unless it was acked (a node has it) or answered meanwhile.
    pub fn remote_not_taken(&self, key: u64) {
        for request in self.pending.for_cpe_gone(REMOTE_UNACKED_CONN + key) {
            self.answer_remote_offline(request, "offline (no node took it)");
        }
    }

    /// No node has (or took) the CPE of remote `request`: `service-unavailable`, counted offline.
    fn answer_remote_offline(&self, request: PendingRequest, outcome: &str) {
        self.stats.request_done(CrOutcome::Offline, request.started);
        self.answer_for_cpe(request, "service-unavailable", ErrorType::Cancel, outcome);
    }

    /// This node lost its NATS connection: no relayed answer can arrive, so every request waiting
    /// on another node is answered `service-unavailable` now.
    pub fn remote_all_lost(&self) {
        for request in self.pending.take_remote() {
            Stats::bump(&self.stats.cluster_unavailable);
            self.stats.request_done(CrOutcome::CpeGone, request.started);
            self.answer_for_cpe(
                request,
                "service-unavailable",
                ErrorType::Cancel,
                "cluster unavailable",
            );
        }
    }

    /// A newer login for `full` on another node: the session here gets `<conflict/>`; its task
    /// then ends it like any replaced session (its pending requests answered at once).
    pub fn replaced_elsewhere(&self, full: &str) -> bool {
        let Ok(jid) = JidRef::parse(full) else {
            return false;
        };
        let mut closed = false;
        for session in self.sessions_of(&jid) {
            if session.outbox.close("conflict") {
                Stats::bump(&self.stats.sessions_replaced);
                closed = true;
            }
        }
        closed
    }
}
