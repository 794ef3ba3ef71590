//! Accept loops: one task per listener, one task per accepted connection, connection caps, and
//! the stop signal that ends accepting.

use crate::context::{Context, ListenerSettings};
use crate::ops::metrics::Stats;
use crate::session::{c2s, component};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

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

fn admit(
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

#[derive(Clone, Copy)]
pub enum Service {
    C2s,
    Component,
}

/// Accept until `stop` turns true.
pub async fn accept_loop(
    listener: TcpListener,
    service: Service,
    settings: Option<Arc<ListenerSettings>>,
    ctx: Arc<Context>,
    caps: Arc<ConnectionCaps>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = crate::context::stopped(&mut stop) => return,
        };
        let (tcp, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(guard) = admit(peer, &ctx.stats, &caps) else {
            Stats::bump(&ctx.stats.connections_refused_cap);
            tracing::debug!(%peer, "connection refused: cap reached");
            drop(tcp);
            continue;
        };
        let conn_id = NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed);
        let ctx = ctx.clone();
        let settings = settings.clone();
        tokio::spawn(serve(tcp, peer, conn_id, service, settings, ctx, guard));
    }
}

async fn serve(
    tcp: TcpStream,
    peer: SocketAddr,
    conn_id: u64,
    service: Service,
    settings: Option<Arc<ListenerSettings>>,
    ctx: Arc<Context>,
    guard: ConnectionGuard,
) {
    match (service, settings) {
        (Service::C2s, Some(settings)) => {
            c2s::serve(tcp, peer, conn_id, settings, ctx, guard).await
        }
        (Service::Component, _) => component::serve(tcp, peer, conn_id, ctx, guard).await,
        (Service::C2s, None) => {}
    }
}
