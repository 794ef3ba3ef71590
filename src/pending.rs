//! Connection requests in flight: which ACS connection asked, under which id, until when.
//!
//! Each request relayed from an ACS entity to a CPE gets a broker-wide id (`crb<n>`) on the way to
//! the CPE, so two ACS entities using the same id never collide; the ACS's own id is restored on the
//! answer. An entry leaves the table exactly once (CPE answer, deadline, CPE session end, shutdown),
//! under the table lock, and whoever removes it sends the one answer. That is the whole guarantee.

use crate::session::SessionHandle;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const ID_PREFIX: &str = "crb";

pub struct PendingRequest {
    pub acs: Arc<SessionHandle>,
    /// The requester's JID as stamped on the request (where the answer goes).
    pub acs_jid: String,
    pub acs_id: String,
    pub cpe_conn: u64,
    pub cpe_jid: String,
    pub started: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Too many requests pending for this CPE.
    CpeBusy,
    /// Too many requests pending from this ACS connection.
    AcsBusy,
}

pub struct PendingTable {
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
        PendingTable {
            timeout,
            max_per_cpe,
            max_per_acs,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Record a request; returns the id to use toward the CPE.
    pub fn begin(&self, request: PendingRequest) -> Result<u64, Refusal> {
        let mut inner = self.lock();
        let cpe_count = inner.by_cpe.get(&request.cpe_conn).map_or(0, Vec::len);
        if cpe_count >= self.max_per_cpe {
            return Err(Refusal::CpeBusy);
        }
        let acs_conn = request.acs.conn_id;
        if inner.per_acs.get(&acs_conn).copied().unwrap_or(0) >= self.max_per_acs {
            return Err(Refusal::AcsBusy);
        }
        inner.next_id += 1;
        let id = inner.next_id;
        let deadline = request.started + self.timeout;
        inner.by_cpe.entry(request.cpe_conn).or_default().push(id);
        *inner.per_acs.entry(acs_conn).or_default() += 1;
        inner.deadlines.push_back((deadline, id));
        inner.entries.insert(id, (request, deadline));
        Ok(id)
    }

    /// Take the request `id` if it is pending for the CPE connection `cpe_conn`.
    pub fn complete(&self, cpe_conn: u64, id: u64) -> Option<PendingRequest> {
        let mut inner = self.lock();
        if inner.entries.get(&id)?.0.cpe_conn != cpe_conn {
            return None;
        }
        inner.remove(id)
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

/// The id a CPE sees for pending request `id`.
pub fn wire_id(id: u64) -> String {
    format!("{ID_PREFIX}{id}")
}

/// The pending-request number in a CPE's answer id, if it is one of ours.
pub fn parse_wire_id(wire: &str) -> Option<u64> {
    wire.strip_prefix(ID_PREFIX)?.parse().ok()
}
