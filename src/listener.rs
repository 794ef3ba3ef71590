//! Accept loops: one task per listener, one task per accepted connection (admitted by the
//! connection caps in [`crate::caps`]), and the stop signal that ends accepting. Each accepted
//! connection gets the current [`Generation`] of settings (swapped by a reload).

use crate::caps::{admit, ConnectionCaps};
use crate::context::Generation;
use crate::ops::metrics::Stats;
use crate::session::{c2s, component};
use crate::swap::Swap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

#[derive(Clone, Copy)]
pub enum Service {
    /// The c2s listener with this index in the config (and in [`Generation::listeners`]).
    C2s(usize),
    Component,
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
        let Some(guard) = admit(peer, &stats, &caps) else {
            Stats::bump(&stats.connections_refused_cap);
            tracing::debug!(%peer, "connection refused: cap reached");
            drop(tcp);
            continue;
        };
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
        match service {
            Service::C2s(index) => {
                let settings = current.listeners[index].clone();
                tokio::spawn(c2s::serve(tcp, peer, conn_id, settings, ctx, guard));
            }
            Service::Component => {
                tokio::spawn(component::serve(tcp, peer, conn_id, ctx, guard));
            }
        }
    }
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
