//! Online sessions and the routing policy.
//!
//! The router maps bare JIDs to their bound client sessions (most recent last) and component
//! domains to their connections. It decides who may address whom: a CPE may address only the
//! server and ACS entities; ACS entities (components, ACS accounts) may address CPEs. Requests
//! from an ACS to a CPE go through the [`PendingTable`] so each gets exactly one answer.
//!
//! The router is the authority for this node's sessions. What is not here goes to the
//! [`RemoteDelivery`] installed in cluster mode ([`remote`], implemented by src/cluster/): the
//! router keeps the pending entry and its deadline, the cluster only carries stanzas.

mod remote;

pub use remote::{RemoteDelivery, RemoteUnavailable};

use crate::jid::JidRef;
use crate::ops::metrics::{CrOutcome, Stats};
use crate::outbox::{AnswerError, PushError};
use crate::pending::{PendingRequest, PendingTable, Refusal, WireId};
use crate::proto::stanza::{self, ErrorType, IqType, Kind};
use crate::session::{Role, SessionHandle};
use crate::xml::Element;
use dashmap::DashMap;
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

const REQUEST_LOG: &str = "crbroker::requests";

pub struct Router {
    domain: String,
    acs_accounts: HashSet<String>,
    component_domains: HashSet<String>,
    /// bare JID -> bound sessions of that account, most recently bound last.
    clients: DashMap<String, Vec<Arc<SessionHandle>>>,
    components: DashMap<String, Vec<Arc<SessionHandle>>>,
    round_robin: AtomicUsize,
    pub pending: PendingTable,
    pub stats: Arc<Stats>,
    /// The other nodes (cluster mode only), set once at start.
    remote: OnceLock<Arc<dyn RemoteDelivery>>,
}

/// Where a stanza's `to` points.
enum Target {
    /// The server itself (or no `to`): handled by the sender's session.
    Server,
    Cpe,
    Acs,
    Elsewhere,
}

impl Router {
    pub fn new(
        domain: &str,
        acs_usernames: &[String],
        component_domains: impl IntoIterator<Item = String>,
        pending: PendingTable,
        stats: Arc<Stats>,
    ) -> Router {
        let domain = domain.to_ascii_lowercase();
        Router {
            acs_accounts: acs_usernames
                .iter()
                .map(|u| format!("{}@{}", u.to_ascii_lowercase(), domain))
                .collect(),
            component_domains: component_domains
                .into_iter()
                .map(|d| d.to_ascii_lowercase())
                .collect(),
            domain,
            clients: DashMap::new(),
            components: DashMap::new(),
            round_robin: AtomicUsize::new(0),
            pending,
            stats,
            remote: OnceLock::new(),
        }
    }

    /// The broker's own domain.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The client sessions a JID names: every session of a bare JID, the one of a full JID.
    pub fn sessions_of(&self, jid: &JidRef) -> Vec<Arc<SessionHandle>> {
        match jid.resource {
            Some(_) => self.find_client(jid).into_iter().collect(),
            None => self
                .clients
                .get(jid.bare().as_ref())
                .map(|sessions| sessions.clone())
                .unwrap_or_default(),
        }
    }

    /// One page of client sessions in bare-JID order: up to `limit` accounts after `after`,
    /// and the cursor for the next page (None on the last). A scan of the map per page: meant
    /// for operators, not for the hot path.
    pub fn list_sessions(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> (Vec<Arc<SessionHandle>>, Option<String>) {
        let mut bares: Vec<String> = self
            .clients
            .iter()
            .filter(|entry| after.is_none_or(|a| entry.key().as_str() > a))
            .map(|entry| entry.key().clone())
            .collect();
        bares.sort_unstable();
        let next = (bares.len() > limit).then(|| bares[limit - 1].clone());
        bares.truncate(limit);
        let sessions = bares
            .iter()
            .filter_map(|bare| self.clients.get(bare).map(|s| s.clone()))
            .flatten()
            .collect();
        (sessions, next)
    }

    pub fn is_acs_account(&self, bare: &str) -> bool {
        self.acs_accounts.contains(bare)
    }

    pub fn is_component_domain(&self, domain: &str) -> bool {
        self.component_domains.contains(&*crate::jid::lower(domain))
    }

    /// Register a bound client session. A session already bound to the same full JID is returned
    /// (the caller closes it with `<conflict/>`).
    pub fn bind_client(
        &self,
        bare: &str,
        session: Arc<SessionHandle>,
    ) -> Option<Arc<SessionHandle>> {
        let mut entry = self.clients.entry(bare.to_string()).or_default();
        let replaced = entry
            .iter()
            .position(|s| s.jid == session.jid)
            .map(|i| entry.remove(i));
        // Told under the entry's lock, so the cluster sees binds and unbinds of one bare JID
        // in the order they happened here.
        if let Some(remote) = self.remote.get() {
            remote.bound(bare, &session, replaced.is_some());
        }
        entry.push(session);
        replaced
    }

    /// How many client sessions are bound right now (for the admin view and the fuzz target's
    /// check that a finished connection left nothing behind).
    pub fn bound_clients(&self) -> usize {
        self.clients.iter().map(|entry| entry.value().len()).sum()
    }

    pub fn unbind_client(&self, bare: &str, conn_id: u64) {
        let remote = self.remote.get();
        self.clients.remove_if_mut(bare, |_, sessions| {
            if let Some(i) = sessions.iter().position(|s| s.conn_id == conn_id) {
                let session = sessions.remove(i);
                if let Some(remote) = remote {
                    remote.unbound(bare, &session, sessions.is_empty());
                }
            }
            sessions.is_empty()
        });
    }

    /// Close (with the stream error `condition`) every bound client session whose username
    /// `keep` refuses; returns how many were asked to close. Each session's own task then ends
    /// it like any other closed session, answering its pending requests (`cpe_gone`). Shard
    /// locks are held one at a time and only while the map is walked; nothing here awaits.
    pub fn close_clients(&self, keep: impl Fn(&str) -> bool, condition: &'static str) -> usize {
        let mut closed = 0;
        for entry in self.clients.iter() {
            let username = entry.key().split('@').next().unwrap_or_default();
            if !keep(username) {
                closed += entry
                    .value()
                    .iter()
                    .filter(|session| session.outbox.close(condition))
                    .count();
            }
        }
        closed
    }

    /// Close (with the stream error `condition`) every bound session of one account: a lookup
    /// of its bare JID, not a walk of all sessions. Returns how many were asked to close.
    pub fn close_account(&self, username: &str, condition: &'static str) -> usize {
        let bare = format!("{}@{}", username.to_ascii_lowercase(), self.domain);
        self.clients.get(&bare).map_or(0, |sessions| {
            sessions
                .iter()
                .filter(|session| session.outbox.close(condition))
                .count()
        })
    }

    pub fn attach_component(&self, domain: &str, session: Arc<SessionHandle>) {
        let domain = domain.to_ascii_lowercase();
        let mut conns = self.components.entry(domain.clone()).or_default();
        if let (Some(remote), true) = (self.remote.get(), conns.is_empty()) {
            remote.acs_attached(&domain);
        }
        conns.push(session);
    }

    pub fn detach_component(&self, domain: &str, conn_id: u64) {
        let domain = domain.to_ascii_lowercase();
        let remote = self.remote.get();
        self.components.remove_if_mut(&domain, |_, conns| {
            conns.retain(|s| s.conn_id != conn_id);
            if let (Some(remote), true) = (remote, conns.is_empty()) {
                remote.acs_detached(&domain);
            }
            conns.is_empty()
        });
    }

    /// The session a client-domain JID names: a full JID exactly, a bare JID the latest bound.
    fn find_client(&self, jid: &JidRef) -> Option<Arc<SessionHandle>> {
        let bare = jid.bare();
        let sessions = self.clients.get(bare.as_ref())?;
        match jid.resource {
            Some(resource) => sessions
                .iter()
                .find(|s| {
                    s.jid.len() == bare.len() + 1 + resource.len() && s.jid.ends_with(resource)
                })
                .cloned(),
            None => sessions.last().cloned(),
        }
    }

    fn find_component(&self, domain: &str) -> Option<Arc<SessionHandle>> {
        let conns = self.components.get(&*crate::jid::lower(domain))?;
        match conns.len() {
            0 => None,
            1 => Some(conns[0].clone()),
            n => Some(conns[self.round_robin.fetch_add(1, Ordering::Relaxed) % n].clone()),
        }
    }

    fn classify(&self, to: Option<&JidRef>, sender: &SessionHandle) -> Target {
        let Some(to) = to else { return Target::Server };
        if to.domain_is(&self.domain) {
            match to.local {
                None => Target::Server,
                Some(_) => {
                    let bare = to.bare();
                    if self.acs_accounts.contains(bare.as_ref()) {
                        Target::Acs
                    } else if sender.role != Role::Component
                        && to.resource.is_none()
                        && sender.jid.starts_with(bare.as_ref())
                        && sender.jid.as_bytes().get(bare.len()) == Some(&b'/')
                    {
                        // A client addressing its own bare JID talks to the server on its behalf.
                        Target::Server
                    } else {
                        Target::Cpe
                    }
                }
            }
        } else if self.is_component_domain(to.domain) {
            Target::Acs
        } else {
            Target::Elsewhere
        }
    }

    /// Route a stanza whose `from` the sender's session has already stamped.
    /// Returns a reply for the sender (an error) when the stanza cannot be delivered, or
    /// `Err(stanza)` when the stanza is for the server itself (the session handles it).
    /// `may_send_unsolicited` is the CPE session's rate limit: asked (and spent) once when a CPE
    /// sends an ACS entity anything but the answer to a pending request.
    pub fn route(
        &self,
        sender: &Arc<SessionHandle>,
        stanza: Element,
        may_send_unsolicited: impl FnOnce() -> bool,
    ) -> Result<Option<Element>, Element> {
        let kind = Kind::of(&stanza);
        let iq_type = if kind == Some(Kind::Iq) {
            IqType::of(&stanza)
        } else {
            None
        };
        let is_request = iq_type.is_some_and(IqType::is_request);
        // A CPE's answer to a pending request goes to the requester, whatever its `to` says
        // (some devices leave `to` out or address the server).
        let stanza = if sender.role == Role::Cpe && kind == Some(Kind::Iq) && !is_request {
            match self.take_pending_answer(sender, stanza) {
                Ok(()) => return Ok(None),
                Err(stanza) => stanza,
            }
        } else {
            stanza
        };
        let to_attr = stanza.attr("to").map(str::to_owned);
        let to = match to_attr.as_deref().map(JidRef::parse) {
            None => None,
            Some(Ok(jid)) => Some(jid),
            Some(Err(_)) => {
                return Ok(is_request.then(|| {
                    stanza::error_reply(&stanza, None, "jid-malformed", ErrorType::Modify)
                }));
            }
        };
        let target = self.classify(to.as_ref(), sender);
        let refuse = |stanza: &Element| {
            Stats::bump(&self.stats.stanzas_refused);
            tracing::debug!(to = ?to_attr, kind = %stanza.name, "stanza refused by routing policy");
            is_request.then(|| {
                stanza::error_reply(
                    stanza,
                    to_attr.as_deref(),
                    "service-unavailable",
                    ErrorType::Cancel,
                )
            })
        };
        match (target, sender.role) {
            (Target::Server, _) => Err(stanza),
            (Target::Elsewhere, _) => Ok(refuse(&stanza)),
            (Target::Cpe, Role::Cpe) => Ok(refuse(&stanza)),
            (Target::Cpe, _) => {
                let Some(to) = to else { return Err(stanza) };
                if is_request {
                    Ok(self.relay_request(sender, stanza, &to))
                } else {
                    match self.find_client(&to) {
                        Some(cpe) => {
                            if let Err((PushError::Full, _)) = cpe.outbox.push(stanza) {
                                Stats::bump(&self.stats.stanzas_dropped_outbox_full);
                            }
                        }
                        None => match self.remote_for(sender) {
                            Some(remote) => remote.forward_to_cpe(&to, stanza),
                            None => Stats::bump(&self.stats.stanzas_refused),
                        },
                    }
                    Ok(None)
                }
            }
            (Target::Acs, role) => {
                let Some(to) = to else { return Err(stanza) };
                if role == Role::Cpe {
                    if !is_request && kind == Some(Kind::Iq) {
                        self.drop_unmatched_answer(sender, &stanza);
                        return Ok(None);
                    }
                    if !may_send_unsolicited() {
                        return Ok(self.rate_limited(sender, &stanza, is_request, &to_attr));
                    }
                }
                let destination = if self.is_component_domain(to.domain) {
                    self.find_component(to.domain)
                } else {
                    self.find_client(&to)
                };
                let Some(acs) = destination else {
                    // An ACS entity attached to another node takes it there (no answer is
                    // tracked: the ACS's reply comes back as a stanza to the CPE).
                    if let Some(remote) = self.remote_for(sender) {
                        let address = match self.is_component_domain(to.domain) {
                            true => crate::jid::lower(to.domain).into_owned(),
                            false => to.bare().into_owned(),
                        };
                        return match remote.forward_to_acs(&address, stanza) {
                            Ok(()) => Ok(None),
                            Err(stanza) => Ok(refuse(&stanza)),
                        };
                    }
                    return Ok(refuse(&stanza));
                };
                match acs.outbox.push(stanza) {
                    Ok(()) => Ok(None),
                    Err((PushError::Full, stanza)) => {
                        // Unsolicited traffic never takes the room kept for answers: it waits
                        // for nothing and is dropped; a request learns so.
                        Stats::bump(&self.stats.stanzas_dropped_outbox_full);
                        Ok(is_request.then(|| {
                            stanza::error_reply(
                                &stanza,
                                to_attr.as_deref(),
                                "resource-constraint",
                                ErrorType::Wait,
                            )
                        }))
                    }
                    Err((_, stanza)) => Ok(refuse(&stanza)),
                }
            }
        }
    }

    /// ACS -> CPE request: track it, rewrite the id, deliver, or answer at once.
    fn relay_request(
        &self,
        acs: &Arc<SessionHandle>,
        mut request: Element,
        to: &JidRef,
    ) -> Option<Element> {
        let acs_jid = request.attr("from").unwrap_or_default().to_string();
        let acs_id = request.attr("id").unwrap_or_default().to_string();
        let to_attr = request.attr("to").unwrap_or_default().to_string();
        let started = Instant::now();
        let remote = self.remote_for(acs);
        if let Some(remote) =
            remote.filter(|r| to.resource.is_none() && r.newer_elsewhere(&to.bare()))
        {
            return self.relay_remote(remote, acs, request, to, started);
        }
        let Some(cpe) = self.find_client(to) else {
            if let Some(remote) = remote {
                return self.relay_remote(remote, acs, request, to, started);
            }
            self.stats.request_done(CrOutcome::Offline, started);
            log_outcome(&acs_jid, &to_attr, &acs_id, "offline", None, started);
            return Some(stanza::iq_error(
                &acs_id,
                &to_attr,
                &acs_jid,
                "service-unavailable",
                ErrorType::Cancel,
                &self.domain,
            ));
        };
        let entry = PendingRequest {
            acs: acs.clone(),
            acs_jid: acs_jid.clone(),
            acs_id: acs_id.clone(),
            wire: WireId::Acs,
            cpe_conn: cpe.conn_id,
            cpe_jid: cpe.jid.clone(),
            started,
        };
        let id = match self.pending.begin(entry) {
            Ok((id, WireId::Acs)) => id,
            Ok((id, WireId::Broker(n))) => {
                request.set_attr("id", self.pending.broker_id(n));
                id
            }
            Err(refusal) => {
                self.stats.request_done(CrOutcome::Overload, started);
                let why = match refusal {
                    Refusal::CpeBusy => "overload (cpe)",
                    Refusal::AcsBusy => "overload (acs)",
                };
                log_outcome(&acs_jid, &cpe.jid, &acs_id, why, None, started);
                return Some(stanza::iq_error(
                    &acs_id,
                    &cpe.jid,
                    &acs_jid,
                    "resource-constraint",
                    ErrorType::Wait,
                    &self.domain,
                ));
            }
        };
        // The CPE sees its own full JID even when the ACS used the bare one.
        request.set_attr("to", cpe.jid.as_str());
        match cpe.outbox.push(request) {
            Ok(()) => {
                Stats::bump(&self.stats.requests_relayed);
                None
            }
            Err((error, _)) => {
                let entry = self.pending.cancel(id)?;
                let (condition, error_type, outcome) = match error {
                    PushError::Full => (
                        "resource-constraint",
                        ErrorType::Wait,
                        "overload (outbox full)",
                    ),
                    PushError::Closed => ("service-unavailable", ErrorType::Cancel, "offline"),
                };
                self.stats.request_done(
                    match error {
                        PushError::Full => CrOutcome::Overload,
                        PushError::Closed => CrOutcome::Offline,
                    },
                    started,
                );
                log_outcome(&acs_jid, &entry.cpe_jid, &acs_id, outcome, None, started);
                Some(stanza::iq_error(
                    &acs_id,
                    &entry.cpe_jid,
                    &acs_jid,
                    condition,
                    error_type,
                    &self.domain,
                ))
            }
        }
    }

    /// A CPE's IQ result/error for one of its pending requests: deliver it to the connection that
    /// asked, with the ACS's id and address restored. Hands the stanza back when it answers nothing.
    fn take_pending_answer(
        &self,
        cpe: &Arc<SessionHandle>,
        answer: Element,
    ) -> Result<(), Element> {
        let request = answer
            .attr("id")
            .and_then(|id| self.pending.complete(cpe.conn_id, id));
        let Some(request) = request else {
            return Err(answer);
        };
        self.answer_with(request, answer);
        Ok(())
    }

    /// Deliver the CPE's `answer` to `request` (taken from the table): count, log, restore the
    /// ACS's id and address.
    fn answer_with(&self, request: PendingRequest, mut answer: Element) {
        let is_error = answer.attr("type") == Some("error");
        self.stats.request_done(
            match is_error {
                true => CrOutcome::CpeError,
                false => CrOutcome::CpeResult,
            },
            request.started,
        );
        log_outcome(
            &request.acs_jid,
            &request.cpe_jid,
            &request.acs_id,
            if is_error { "cpe error" } else { "cpe result" },
            stanza::error_condition(&answer),
            request.started,
        );
        answer.set_attr("id", request.acs_id.as_str());
        answer.set_attr("to", request.acs_jid.as_str());
        self.deliver_to_acs(&request.acs, answer);
    }

    /// A CPE's IQ result/error to an ACS entity that answers nothing pending: late (after the
    /// broker answered) or unknown. Dropped and counted, never delivered.
    fn drop_unmatched_answer(&self, cpe: &SessionHandle, answer: &Element) {
        Stats::bump(&self.stats.answers_late_or_unknown);
        tracing::debug!(target: REQUEST_LOG, cpe = %cpe.jid, id = ?answer.attr("id"), "late or unknown answer dropped");
    }

    /// A CPE session's unsolicited stanza to an ACS entity, over its rate: cut and counted; an IQ
    /// request is answered `policy-violation` (type wait). Not `resource-constraint`: nothing is
    /// overloaded; the sender violated a local service policy (RFC 6120's meaning of
    /// `policy-violation`), and `wait` says it may retry later.
    fn rate_limited(
        &self,
        cpe: &SessionHandle,
        stanza: &Element,
        is_request: bool,
        to: &Option<String>,
    ) -> Option<Element> {
        Stats::bump(&self.stats.cpe_to_acs_rate_limited);
        tracing::debug!(cpe = %cpe.jid, kind = %stanza.name, "unsolicited stanza to the ACS over the rate limit");
        is_request.then(|| {
            stanza::error_reply(stanza, to.as_deref(), "policy-violation", ErrorType::Wait)
        })
    }

    /// The one answer to a pending request, into the room the ACS connection keeps for answers.
    fn deliver_to_acs(&self, acs: &SessionHandle, stanza: Element) {
        match acs.outbox.push_answer(stanza) {
            Ok(()) => {}
            Err(AnswerError::Overflow { lost }) => {
                // The ACS stopped reading; the outbox dropped what it held and is closing the
                // connection. These answers are lost with the connection, like any to a gone ACS.
                self.stats
                    .answers_acs_gone
                    .fetch_add(lost as u64 + 1, Ordering::Relaxed);
                Stats::bump(&self.stats.acs_closed_answer_room_full);
                tracing::warn!(acs = %acs.jid, conn = acs.conn_id, lost = lost + 1, "ACS connection stopped reading (answer room full): closing it");
            }
            Err(_) => Stats::bump(&self.stats.answers_acs_gone),
        }
    }

    /// Answer `request` on the broker's behalf (timeout, CPE gone, shutdown).
    pub fn answer_for_cpe(
        &self,
        request: PendingRequest,
        condition: &str,
        error_type: ErrorType,
        outcome: &str,
    ) {
        log_outcome(
            &request.acs_jid,
            &request.cpe_jid,
            &request.acs_id,
            outcome,
            Some(condition),
            request.started,
        );
        let reply = stanza::iq_error(
            &request.acs_id,
            &request.cpe_jid,
            &request.acs_jid,
            condition,
            error_type,
            &self.domain,
        );
        self.deliver_to_acs(&request.acs, reply);
    }

    /// Answer requests whose deadline passed.
    pub fn expire_requests(&self, now: Instant) {
        for request in self.pending.expired(now) {
            self.stats.request_done(CrOutcome::Timeout, request.started);
            self.answer_for_cpe(request, "remote-server-timeout", ErrorType::Wait, "timeout");
        }
    }

    /// A CPE connection ended: answer everything pending for it at once.
    pub fn cpe_gone(&self, cpe_conn: u64) {
        for request in self.pending.for_cpe_gone(cpe_conn) {
            self.stats.request_done(CrOutcome::CpeGone, request.started);
            self.answer_for_cpe(
                request,
                "service-unavailable",
                ErrorType::Cancel,
                "cpe gone",
            );
        }
    }
}

fn log_outcome(
    acs: &str,
    cpe: &str,
    id: &str,
    outcome: &str,
    condition: Option<&str>,
    started: Instant,
) {
    tracing::info!(
        target: REQUEST_LOG,
        acs,
        cpe,
        id,
        outcome,
        condition = condition.unwrap_or("-"),
        latency_us = started.elapsed().as_micros() as u64,
        "connection request"
    );
}
