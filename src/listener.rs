//! Accept loops: one task per listener, one task per accepted connection (admitted by the
//! connection caps in [`crate::caps`]), and the stop signal that ends accepting.

use crate::caps::{admit, ConnectionCaps};
use crate::context::{Context, ListenerSettings};
use crate::ops::metrics::Stats;
use crate::session::{c2s, component};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

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
        // Stanzas go out in one write each; never wait for more.
        let _ = tcp.set_nodelay(true);
        if let Some(idle) = ctx.tcp_keepalive {
            set_keepalive(&tcp, idle);
        }
        // One task type per service: a task is as large as its future, and a c2s session must
        // not pay for the component session's state (or the other way round).
        match (service, &settings) {
            (Service::C2s, Some(settings)) => {
                tokio::spawn(c2s::serve(tcp, peer, conn_id, settings.clone(), ctx, guard));
            }
            (Service::Component, _) => {
                tokio::spawn(component::serve(tcp, peer, conn_id, ctx, guard));
            }
            (Service::C2s, None) => {}
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
