//! Connection caps: how many connections, and how many unauthenticated ones per source address
//! and in all, may be open at once. Checked at accept, before TLS costs anything (on a PROXY
//! protocol listener the per-address cap waits for the header, which names the address); the
//! guard a connection task carries keeps the counts right however the task ends.

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
    pre_auth: bool,
    /// The address whose per-IP pre-auth count this connection holds (while pre-auth).
    pre_auth_ip: Option<IpAddr>,
}

impl ConnectionGuard {
    /// The connection authenticated: it no longer counts against the pre-auth caps.
    pub fn authenticated(&mut self) {
        if !std::mem::take(&mut self.pre_auth) {
            return;
        }
        self.caps.pre_auth_total.fetch_sub(1, Ordering::Relaxed);
        if let Some(ip) = self.pre_auth_ip.take() {
            let mut map = self.caps.per_ip();
            if let Some(count) = map.get_mut(&ip) {
                *count -= 1;
                if *count == 0 {
                    map.remove(&ip);
                }
            }
        }
    }

    /// Count this (pre-auth) connection against `ip`'s pre-auth cap: false if `ip` is at its cap
    /// (the connection is to be closed). Called once, at accept, or after a PROXY header named
    /// the real source.
    pub fn claim_address(&mut self, ip: IpAddr) -> bool {
        if !self.pre_auth || self.pre_auth_ip.is_some() || self.caps.max_pre_auth_per_ip == 0 {
            return true;
        }
        let mut map = self.caps.per_ip();
        let count = map.entry(ip).or_default();
        if *count >= self.caps.max_pre_auth_per_ip {
            return false;
        }
        *count += 1;
        self.pre_auth_ip = Some(ip);
        true
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.authenticated();
        self.stats.connections_open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Admit a connection from `peer` under every cap, or None (close it).
pub fn admit(
    peer: SocketAddr,
    stats: &Arc<Stats>,
    caps: &Arc<ConnectionCaps>,
) -> Option<ConnectionGuard> {
    let mut guard = admit_unaddressed(stats, caps)?;
    // A refused guard drops here and gives its total counts back.
    if !guard.claim_address(peer.ip()) {
        return None;
    }
    Stats::bump(&stats.connections_accepted);
    Some(guard)
}

/// Admit a connection under the total caps only: its source address is not known yet (a PROXY
/// header will name it, then [`ConnectionGuard::claim_address`]). Connections awaiting their
/// header count as pre-auth, so `max_pre_auth_total` bounds them too.
pub fn admit_unaddressed(
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
    caps.pre_auth_total.fetch_add(1, Ordering::Relaxed);
    stats.connections_open.fetch_add(1, Ordering::Relaxed);
    Some(ConnectionGuard {
        stats: stats.clone(),
        caps: caps.clone(),
        pre_auth: true,
        pre_auth_ip: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([203, 0, 113, last])
    }

    /// A connection admitted before its address is known takes its per-address slot later; the
    /// slot and the total count are given back when it authenticates or ends.
    #[test]
    fn per_address_slot_is_claimed_after_accept_and_given_back() {
        let stats = Arc::new(Stats::default());
        let caps = Arc::new(ConnectionCaps::new(0, 1, 3));
        let mut first = admit_unaddressed(&stats, &caps).unwrap();
        let mut second = admit_unaddressed(&stats, &caps).unwrap();
        assert_eq!(caps.pre_auth(), 2);
        assert!(first.claim_address(ip(7)));
        assert!(!second.claim_address(ip(7)), "one per address");
        assert!(second.claim_address(ip(8)));
        let third = admit_unaddressed(&stats, &caps).unwrap();
        assert!(admit_unaddressed(&stats, &caps).is_none(), "total cap");
        drop(third);
        first.authenticated();
        assert_eq!(caps.pre_auth(), 1);
        let mut again = admit_unaddressed(&stats, &caps).unwrap();
        assert!(
            again.claim_address(ip(7)),
            "slot given back at authentication"
        );
        drop((first, second, again));
        assert_eq!(caps.pre_auth(), 0);
        assert!(caps.per_ip().is_empty());
        assert_eq!(Stats::get(&stats.connections_open), 0);
    }
}
