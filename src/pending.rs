//! Connection requests in flight: which ACS connection asked, under which id, until when.
//!
//! Toward the CPE a request keeps the ACS's own id, so an ACS log line and a CPE log line for one
//! request show the same id. Only when that id is already pending on the same CPE session (two ACS
//! entities, or one ACS reusing an id) does the request get a broker id, `crb-<run>-<n>`, where
//! `<run>` is random per broker process, so broker ids never repeat across restarts either. The
//! ACS's id is restored on the answer. A CPE's answer is matched by its id among the requests
//! pending on its own session (at most `max_pending_per_cpe`, so a short scan).
//! An entry leaves the table exactly once (CPE answer, deadline, CPE session end, shutdown),
//! under the table lock, and whoever removes it sends the one answer. That is the whole guarantee.
//!
//! A request for a CPE on another cluster node (src/cluster/) stays in this table too, so the
//! requester's node keeps the deadline and the one answer. Its CPE "connection" is synthetic:
//! `REMOTE_UNACKED_CONN + key` until a node acknowledges it, then `REMOTE_NODE_CONN + node index`,
//! so that losing a node answers everything it held with the same [`PendingTable::for_cpe_gone`]
//! as a local session's end. Toward the remote CPE it always carries its broker id, which names
//! this process (`<run>`), so the remote node's answer finds it by id alone.

use crate::session::SessionHandle;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const ID_PREFIX: &str = "crb-";

/// Synthetic CPE connection of a remote request acknowledged by node `n`: this plus `n`.
pub const REMOTE_NODE_CONN: u64 = 1 << 61;
/// Synthetic CPE connection of a remote request no node has acknowledged yet: this plus its key.
pub const REMOTE_UNACKED_CONN: u64 = 1 << 62;

/// Whether a pending request's CPE connection is on another node.
pub fn is_remote_conn(cpe_conn: u64) -> bool {
    cpe_conn < 1 << 63 && cpe_conn & (REMOTE_NODE_CONN | REMOTE_UNACKED_CONN) != 0
}

pub struct PendingRequest {
    pub acs: Arc<SessionHandle>,
    /// The requester's JID as stamped on the request (where the answer goes).
    pub acs_jid: String,
    pub acs_id: String,
    /// The id the CPE sees: the ACS's own, or a broker id when that one was taken.
    pub wire: WireId,
    pub cpe_conn: u64,
    pub cpe_jid: String,
    pub started: Instant,
}

/// The id a pending request carries toward the CPE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireId {
    /// The ACS's own id (`acs_id`).
    Acs,
    /// A broker id, `crb-<run>-<n>`.
    Broker(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Too many requests pending for this CPE.
    CpeBusy,
    /// Too many requests pending from this ACS connection.
    AcsBusy,
}

pub struct PendingTable {
    /// Random per process: broker ids of two runs never collide.
    run: String,
    timeout: Duration,
    max_per_cpe: usize,
    max_per_acs: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    entries: HashMap<u64, (PendingRequest, Instant)>,
    by_cpe: HashMap<u64, Vec<u64>>,
    per_acs: HashMap<u64, usize>,
    /// Deadlines in insertion order: the timeout is one constant, so they are already sorted.
    deadlines: VecDeque<(Instant, u64)>,
}

impl PendingTable {
    pub fn new(timeout: Duration, max_per_cpe: usize, max_per_acs: usize) -> PendingTable {
        let mut random = [0u8; 4];
        // Without OS randomness, the start time still differs between runs.
        if getrandom::getrandom(&mut random).is_err() {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos() ^ d.as_secs() as u32);
            random = nanos.to_le_bytes();
        }
        PendingTable {
            run: random.iter().map(|b| format!("{b:02x}")).collect(),
            timeout,
            max_per_cpe,
            max_per_acs,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Record a request. Returns its table key and the id to use toward the CPE: the ACS's own
    /// unless a request pending on the same CPE session already uses it.
    pub fn begin(&self, request: PendingRequest) -> Result<(u64, WireId), Refusal> {
        let mut inner = self.lock();
        let on_cpe = inner
            .by_cpe
            .get(&request.cpe_conn)
            .map_or(&[][..], Vec::as_slice);
        if on_cpe.len() >= self.max_per_cpe {
            return Err(Refusal::CpeBusy);
        }
        let taken = request.acs_id.is_empty()
            || on_cpe.iter().any(|key| {
                inner
                    .entries
                    .get(key)
                    .is_some_and(|(pending, _)| self.wire_matches(pending, &request.acs_id))
            });
        self.insert(&mut inner, request, |key| match taken {
            true => WireId::Broker(key),
            false => WireId::Acs,
        })
    }

    /// Record a request for a CPE on another node: it always carries its broker id, and its CPE
    /// connection is `REMOTE_UNACKED_CONN + key` until [`PendingTable::acked`]. The per-CPE cap
    /// is the holding node's to apply.
    pub fn begin_remote(&self, request: PendingRequest) -> Result<u64, Refusal> {
        let mut inner = self.lock();
        self.insert(&mut inner, request, WireId::Broker)
            .map(|(key, _)| key)
    }

    fn insert(
        &self,
        inner: &mut Inner,
        mut request: PendingRequest,
        wire: impl FnOnce(u64) -> WireId,
    ) -> Result<(u64, WireId), Refusal> {
        let acs_conn = request.acs.conn_id;
        if inner.per_acs.get(&acs_conn).copied().unwrap_or(0) >= self.max_per_acs {
            return Err(Refusal::AcsBusy);
        }
        inner.next_id += 1;
        let key = inner.next_id;
        request.wire = wire(key);
        if is_remote_conn(request.cpe_conn) {
            request.cpe_conn = REMOTE_UNACKED_CONN + key;
        }
        let wire = request.wire;
        let deadline = request.started + self.timeout;
        inner.by_cpe.entry(request.cpe_conn).or_default().push(key);
        *inner.per_acs.entry(acs_conn).or_default() += 1;
        inner.deadlines.push_back((deadline, key));
        inner.entries.insert(key, (request, deadline));
        Ok((key, wire))
    }

    /// A node acknowledged remote request `key`: from now on it belongs to `node_conn`
    /// (`REMOTE_NODE_CONN + node index`). Nothing happens when it was answered already.
    pub fn acked(&self, key: u64, node_conn: u64) {
        let mut inner = self.lock();
        let unacked = REMOTE_UNACKED_CONN + key;
        let Some((request, _)) = inner.entries.get_mut(&key) else {
            return;
        };
        if request.cpe_conn != unacked {
            return;
        }
        request.cpe_conn = node_conn;
        inner.by_cpe.remove(&unacked);
        inner.by_cpe.entry(node_conn).or_default().push(key);
    }

    /// Take the remote request whose broker id is `wire` (the answer a node relayed).
    pub fn complete_remote(&self, wire: &str) -> Option<PendingRequest> {
        let key = self.broker_key(wire)?;
        let mut inner = self.lock();
        let remote = inner
            .entries
            .get(&key)
            .is_some_and(|(pending, _)| is_remote_conn(pending.cpe_conn));
        remote.then(|| inner.remove(key)).flatten()
    }

    /// The table key of one of this process's broker ids.
    pub fn broker_key(&self, wire: &str) -> Option<u64> {
        wire.strip_prefix(ID_PREFIX)?
            .strip_prefix(self.run.as_str())?
            .strip_prefix('-')?
            .parse()
            .ok()
    }

    /// Take every request waiting on another node (this node lost the cluster).
    pub fn take_remote(&self) -> Vec<PendingRequest> {
        let mut inner = self.lock();
        let conns: Vec<u64> = inner
            .by_cpe
            .keys()
            .copied()
            .filter(|conn| is_remote_conn(*conn))
            .collect();
        let ids: Vec<u64> = conns
            .iter()
            .filter_map(|conn| inner.by_cpe.remove(conn))
            .flatten()
            .collect();
        ids.into_iter().filter_map(|id| inner.remove(id)).collect()
    }

    /// Take the request pending on CPE connection `cpe_conn` whose id toward the CPE is `wire`.
    pub fn complete(&self, cpe_conn: u64, wire: &str) -> Option<PendingRequest> {
        let mut inner = self.lock();
        let key = *inner.by_cpe.get(&cpe_conn)?.iter().find(|key| {
            inner
                .entries
                .get(key)
                .is_some_and(|(pending, _)| self.wire_matches(pending, wire))
        })?;
        inner.remove(key)
    }

    /// The text of a broker id.
    pub fn broker_id(&self, n: u64) -> String {
        format!("{ID_PREFIX}{}-{n}", self.run)
    }

    /// Whether `wire` is the id `pending` carries toward the CPE (no allocation).
    fn wire_matches(&self, pending: &PendingRequest, wire: &str) -> bool {
        match pending.wire {
            WireId::Acs => pending.acs_id == wire,
            WireId::Broker(n) => self.broker_key(wire) == Some(n),
        }
    }

    /// Take a request whose delivery failed.
    pub fn cancel(&self, id: u64) -> Option<PendingRequest> {
        self.lock().remove(id)
    }

    /// Take every request whose deadline has passed.
    pub fn expired(&self, now: Instant) -> Vec<PendingRequest> {
        let mut inner = self.lock();
        let mut out = Vec::new();
        while let Some(&(deadline, id)) = inner.deadlines.front() {
            if deadline > now {
                break;
            }
            inner.deadlines.pop_front();
            if let Some(request) = inner.remove(id) {
                out.push(request);
            }
        }
        out
    }

    /// Take every request pending for a CPE connection that ended.
    pub fn for_cpe_gone(&self, cpe_conn: u64) -> Vec<PendingRequest> {
        let mut inner = self.lock();
        let ids = inner.by_cpe.remove(&cpe_conn).unwrap_or_default();
        ids.into_iter().filter_map(|id| inner.remove(id)).collect()
    }

    /// Take everything (shutdown).
    pub fn drain_all(&self) -> Vec<PendingRequest> {
        let mut inner = self.lock();
        let ids: Vec<u64> = inner.entries.keys().copied().collect();
        let out = ids.into_iter().filter_map(|id| inner.remove(id)).collect();
        inner.deadlines.clear();
        out
    }

    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Requests pending on one CPE connection.
    pub fn count_for_cpe(&self, cpe_conn: u64) -> usize {
        self.lock().by_cpe.get(&cpe_conn).map_or(0, Vec::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Inner {
    fn remove(&mut self, id: u64) -> Option<PendingRequest> {
        let (request, _) = self.entries.remove(&id)?;
        if let Some(ids) = self.by_cpe.get_mut(&request.cpe_conn) {
            ids.retain(|&x| x != id);
            if ids.is_empty() {
                self.by_cpe.remove(&request.cpe_conn);
            }
        }
        if let Some(count) = self.per_acs.get_mut(&request.acs.conn_id) {
            *count -= 1;
            if *count == 0 {
                self.per_acs.remove(&request.acs.conn_id);
            }
        }
        if self.entries.is_empty() {
            // Stale deadlines of answered requests would otherwise linger until they expire.
            self.deadlines.clear();
        }
        Some(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::{Outbox, OutboxLimits};
    use crate::session::{Role, SessionInfo};

    fn table() -> PendingTable {
        PendingTable::new(Duration::from_secs(10), 4, 100)
    }

    fn request(cpe_conn: u64) -> PendingRequest {
        let acs = Arc::new(SessionHandle {
            conn_id: 1,
            jid: "acs.example.net".into(),
            role: Role::Component,
            outbox: Outbox::new(OutboxLimits {
                stanzas: 1,
                bytes: 1,
                answer_bytes: 1,
            }),
            info: SessionInfo::new(None),
        });
        PendingRequest {
            acs,
            acs_jid: "acs.example.net".into(),
            acs_id: "cr-1".into(),
            wire: WireId::Acs,
            cpe_conn,
            cpe_jid: "cpe@example.net/cwmp".into(),
            started: Instant::now(),
        }
    }

    #[test]
    fn a_remote_request_carries_its_broker_id_and_is_answered_once() {
        let table = table();
        let key = table.begin_remote(request(REMOTE_UNACKED_CONN)).unwrap();
        let wire = table.broker_id(key);
        assert_eq!(table.broker_key(&wire), Some(key));
        assert!(table.complete_remote("crb-otherrun-1").is_none());
        let taken = table.complete_remote(&wire).expect("found by id");
        assert_eq!(taken.wire, WireId::Broker(key));
        assert_eq!(taken.cpe_conn, REMOTE_UNACKED_CONN + key);
        assert!(table.complete_remote(&wire).is_none(), "never twice");
        assert!(table.is_empty());
    }

    #[test]
    fn an_acked_request_is_answered_when_its_node_is_lost() {
        let table = table();
        let node = REMOTE_NODE_CONN + 3;
        let key = table.begin_remote(request(REMOTE_UNACKED_CONN)).unwrap();
        table.acked(key, node);
        table.acked(key, REMOTE_NODE_CONN + 4); // a second ack changes nothing
        assert_eq!(table.count_for_cpe(node), 1);
        let lost = table.for_cpe_gone(node);
        assert_eq!(lost.len(), 1);
        table.acked(key, node); // an ack after the answer: nothing to tie
        assert!(table.is_empty());
    }

    #[test]
    fn losing_the_cluster_takes_the_remote_requests_only() {
        let table = table();
        table.begin(request(7)).unwrap();
        let acked = table.begin_remote(request(REMOTE_UNACKED_CONN)).unwrap();
        table.acked(acked, REMOTE_NODE_CONN);
        table.begin_remote(request(REMOTE_UNACKED_CONN)).unwrap();
        assert_eq!(table.take_remote().len(), 2);
        assert_eq!(table.len(), 1);
        assert_eq!(table.count_for_cpe(7), 1);
        assert!(!is_remote_conn(7) && is_remote_conn(REMOTE_NODE_CONN));
        assert!(
            !is_remote_conn(u64::MAX - 1),
            "in-process entities are not remote"
        );
    }
}
