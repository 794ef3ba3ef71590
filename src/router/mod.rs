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
mod requests;

pub use remote::{RemoteDelivery, RemoteUnavailable};

use crate::jid::JidRef;
use crate::ops::metrics::Stats;
use crate::outbox::PushError;
use crate::pending::PendingTable;
use crate::proto::stanza::{self, ErrorType, IqType, Kind};
use crate::session::{Role, SessionHandle};
use crate::xml::Element;
use dashmap::DashMap;
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

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
}
