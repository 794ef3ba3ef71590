//! Listening sockets and accept loops: binding (with SO_REUSEPORT when asked), one task per
//! listener, one task per accepted connection (admitted by the connection caps in
//! [`crate::caps`]), the PROXY header in front of a c2s connection when the listener wants one,
//! and the stop signal that ends accepting. Each accepted connection gets the current
//! [`Generation`] of settings (swapped by a reload).

use crate::caps::{admit, admit_unaddressed, ConnectionCaps, ConnectionGuard};
use crate::context::{Context, Generation, ListenerSettings};
use crate::ops::metrics::Stats;
use crate::proxy::{self, HeaderError, ProxySources};
use crate::session::{c2s, component};
use crate::swap::Swap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

/// Pending connections the kernel queues per listening socket. A reconnect storm (a node lost, a
/// broker restarted) brings thousands of CPEs at once; the kernel caps this at
/// `net.core.somaxconn`, which docs/deployment.md raises to 8192 (tokio's own bind uses 1024).
const LISTEN_BACKLOG: i32 = 8192;

#[derive(Clone)]
pub enum Service {
    C2s {
        /// The listener's index in the config (and in [`Generation::listeners`]).
        index: usize,
        /// Some: every connection starts with a PROXY header, from one of these networks.
        proxy: Option<Arc<ProxySources>>,
    },
    Component,
}

/// Bind a listening socket on `address`; with `reuse_port`, SO_REUSEPORT lets other processes
/// (that set it too, as the same user) bind the same address, and the kernel spreads new
/// connections over all of them.
pub fn bind(address: SocketAddr, reuse_port: bool) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(address), Type::STREAM, None)?;
    // As tokio's own bind: a restarted broker can bind at once despite TIME_WAIT connections.
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// Accept until `stop` turns true.
pub async fn accept_loop(
    listener: TcpListener,
    service: Service,
    generation: Arc<Swap<Generation>>,
    caps: Arc<ConnectionCaps>,
    mut stop: watch::Receiver<bool>,
) {
    let stats = generation.load().ctx.stats.clone();
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
        // The counters are the same in every generation; the generation is loaded only for a
        // connection that is admitted.
        let admitted = match &service {
            Service::C2s {
                proxy: Some(sources),
                ..
            } => {
                if !sources.allows(peer.ip()) {
                    Stats::bump(&stats.connections_refused_proxy_source);
                    tracing::debug!(%peer, "connection refused: not in proxy_from");
                    continue;
                }
                // The per-address cap waits for the address the header names.
                admit_unaddressed(&stats, &caps)
            }
            _ => admit(peer, &stats, &caps),
        };
        let Some(guard) = admitted else {
            Stats::bump(&stats.connections_refused_cap);
            tracing::debug!(%peer, "connection refused: cap reached");
            drop(tcp);
            continue;
        };
        let accepted_at = tokio::time::Instant::now();
        let conn_id = NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed);
        let current = generation.load();
        let ctx = current.ctx.clone();
        // Stanzas go out in one write each; never wait for more.
        let _ = tcp.set_nodelay(true);
        if let Some(idle) = ctx.tcp_keepalive {
            set_keepalive(&tcp, idle);
        }
        // One task type per service: a task is as large as its future, and a c2s session must
        // not pay for the component session's state (or the other way round).
        match &service {
            Service::C2s { index, proxy } => {
                let settings = current.listeners[*index].clone();
                if proxy.is_some() {
                    let accepted = Accepted {
                        conn_id,
                        at: accepted_at,
                        guard,
                    };
                    tokio::spawn(serve_proxied(tcp, peer, accepted, settings, ctx));
                } else {
                    tokio::spawn(c2s::serve(
                        tcp,
                        peer,
                        conn_id,
                        settings,
                        ctx,
                        guard,
                        accepted_at,
                    ));
                }
            }
            Service::Component => {
                tokio::spawn(component::serve(tcp, peer, conn_id, ctx, guard));
            }
        }
    }
}

/// A connection the accept loop admitted.
struct Accepted {
    conn_id: u64,
    at: tokio::time::Instant,
    guard: ConnectionGuard,
}

/// A c2s connection from a load balancer: read its PROXY header (under the pre-auth deadline),
/// count it against the per-address cap of the client the header names, then hand it to a c2s
/// task as that client's. A header that names no client (v2 LOCAL: the balancer's own health
/// check) leaves the balancer's address in its place, and the connection proceeds like any
/// other. This task holds the header's buffer (536 bytes) only while it waits for the header.
async fn serve_proxied(
    mut tcp: TcpStream,
    balancer: SocketAddr,
    mut accepted: Accepted,
    settings: Arc<ListenerSettings>,
    ctx: Arc<Context>,
) {
    let deadline = accepted.at + ctx.pre_auth_timeout;
    let mut shutdown = ctx.shutdown.clone();
    let read = tokio::select! {
        read = tokio::time::timeout_at(deadline, proxy::read_header(&mut tcp)) => read,
        _ = crate::context::stopped(&mut shutdown) => return,
    };
    let conn = accepted.conn_id;
    let peer = match read {
        Ok(Ok(client)) => client.unwrap_or(balancer),
        Ok(Err(HeaderError::ClosedBeforeHeader)) => {
            tracing::debug!(conn, %balancer, "closed before its PROXY header (health check)");
            return;
        }
        Ok(Err(e)) => {
            Stats::bump(&ctx.stats.proxy_headers_invalid);
            tracing::debug!(conn, %balancer, "connection closed: {e}");
            return;
        }
        Err(_) => {
            Stats::bump(&ctx.stats.proxy_headers_invalid);
            tracing::debug!(conn, %balancer, "connection closed: no PROXY header in time");
            return;
        }
    };
    if !accepted.guard.claim_address(peer.ip()) {
        Stats::bump(&ctx.stats.connections_refused_cap);
        tracing::debug!(conn, %peer, %balancer, "connection refused: cap reached");
        return;
    }
    Stats::bump(&ctx.stats.connections_accepted);
    tracing::debug!(conn, %peer, %balancer, "PROXY header read");
    // A task of its own, as large as a connection's without PROXY protocol: this one's state
    // (the balancer's address, the moved-from socket) is not kept for the session's life.
    tokio::spawn(c2s::serve(
        tcp,
        peer,
        conn,
        settings,
        ctx,
        accepted.guard,
        accepted.at,
    ));
}

/// TCP keepalive: after `idle` without traffic, probe every `idle / 4` (at least 10 s), give up
/// after 4 unanswered probes. A CPE that vanished without a FIN (power loss, NAT state dropped)
/// is then found within about twice `idle`, its session ends and its pending requests are answered.
fn set_keepalive(tcp: &tokio::net::TcpStream, idle: std::time::Duration) {
    let interval = (idle / 4).max(std::time::Duration::from_secs(10));
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(idle)
        .with_interval(interval)
        .with_retries(4);
    if let Err(e) = socket2::SockRef::from(tcp).set_tcp_keepalive(&keepalive) {
        tracing::debug!("cannot set TCP keepalive: {e}");
    }
}
