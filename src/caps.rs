//! Connection caps: how many connections, and how many unauthenticated ones per source address
//! and in all, may be open at once. Checked at accept, before TLS costs anything; the guard a
//! connection task carries keeps the counts right however the task ends.

use crate::ops::metrics::Stats;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Caps on connections (0 = off), checked at accept, before TLS costs anything.
/// A connection counts as "pre-auth" from accept until its session is bound (c2s) or its
/// handshake succeeded (component).
pub struct ConnectionCaps {
    pub max_connections: usize,
    pub max_pre_auth_per_ip: usize,
    pub max_pre_auth_total: usize,
    pre_auth_total: AtomicUsize,
    pre_auth_per_ip: Mutex<HashMap<IpAddr, usize>>,
}

impl ConnectionCaps {
    pub fn new(
        max_connections: usize,
        max_pre_auth_per_ip: usize,
        max_pre_auth_total: usize,
    ) -> ConnectionCaps {
        ConnectionCaps {
            max_connections,
            max_pre_auth_per_ip,
            max_pre_auth_total,
            pre_auth_total: AtomicUsize::new(0),
            pre_auth_per_ip: Mutex::new(HashMap::new()),
        }
    }

    /// Connections accepted and not yet authenticated.
    pub fn pre_auth(&self) -> usize {
        self.pre_auth_total.load(Ordering::Relaxed)
    }

    fn per_ip(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.pre_auth_per_ip
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}

/// Keeps the connection counters right however the connection task ends.
pub struct ConnectionGuard {
    stats: Arc<Stats>,
    caps: Arc<ConnectionCaps>,
    /// Set while the connection still counts as pre-auth.
    pre_auth_ip: Option<IpAddr>,
}

impl ConnectionGuard {
    /// The connection authenticated: it no longer counts against the pre-auth caps.
    pub fn authenticated(&mut self) {
        if let Some(ip) = self.pre_auth_ip.take() {
            self.caps.pre_auth_total.fetch_sub(1, Ordering::Relaxed);
            if self.caps.max_pre_auth_per_ip > 0 {
                let mut map = self.caps.per_ip();
                if let Some(count) = map.get_mut(&ip) {
                    *count -= 1;
                    if *count == 0 {
                        map.remove(&ip);
                    }
                }
            }
        }
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.authenticated();
        self.stats.connections_open.fetch_sub(1, Ordering::Relaxed);
    }
}

pub fn admit(
    peer: SocketAddr,
    stats: &Arc<Stats>,
    caps: &Arc<ConnectionCaps>,
) -> Option<ConnectionGuard> {
    let open = Stats::get(&stats.connections_open) as usize;
    if caps.max_connections > 0 && open >= caps.max_connections {
        return None;
    }
    if caps.max_pre_auth_total > 0
        && caps.pre_auth_total.load(Ordering::Relaxed) >= caps.max_pre_auth_total
    {
        return None;
    }
    if caps.max_pre_auth_per_ip > 0 {
        let mut map = caps.per_ip();
        let count = map.entry(peer.ip()).or_default();
        if *count >= caps.max_pre_auth_per_ip {
            return None;
        }
        *count += 1;
    }
    caps.pre_auth_total.fetch_add(1, Ordering::Relaxed);
    stats.connections_open.fetch_add(1, Ordering::Relaxed);
    Stats::bump(&stats.connections_accepted);
    Some(ConnectionGuard {
        stats: stats.clone(),
        caps: caps.clone(),
        pre_auth_ip: Some(peer.ip()),
    })
}
