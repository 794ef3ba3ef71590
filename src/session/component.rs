//! XEP-0114 component connections (the ACS side): header with the component domain as `to`,
//! the SHA-1 handshake, then the ready loop. Several connections may attach for one domain.

use super::c2s::{header_problem, refuse_on_error};
use super::ready;
use super::{new_stream_id, Conn, Role, SessionHandle, SessionInfo};
use crate::caps::ConnectionGuard;
use crate::context::Context;
use crate::ops::metrics::Stats;
use crate::outbox::Outbox;
use crate::proto::component::verify_handshake;
use crate::xml::{ns, Frame};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpStream;
use tracing::Instrument;

pub async fn serve(
    tcp: TcpStream,
    peer: SocketAddr,
    conn_id: u64,
    ctx: Arc<Context>,
    mut guard: ConnectionGuard,
) {
    let span = tracing::debug_span!("component", conn = conn_id, peer = %peer, domain = tracing::field::Empty);
    async move {
        let mut conn = Conn::new(tcp, ctx.limits, ns::COMPONENT, ctx.write_timeout);
        let mut shutdown = ctx.shutdown.clone();
        let handshake = Box::pin(tokio::time::timeout(
            ctx.pre_auth_timeout,
            handshake(&mut conn, &ctx),
        ));
        let domain = tokio::select! {
            result = handshake => match result {
                Ok(Some(domain)) => domain,
                Ok(None) => return,
                Err(_) => {
                    conn.send_stream_error(&ctx.domain, "connection-timeout", None).await;
                    return;
                }
            },
            _ = crate::context::stopped(&mut shutdown) => return,
        };
        guard.authenticated();
        tracing::Span::current().record("domain", domain.as_str());
        let handle = Arc::new(SessionHandle {
            conn_id,
            jid: domain.clone(),
            role: Role::Component,
            outbox: Outbox::new(ctx.acs_outbox_limits),
            info: SessionInfo::new(Some(peer)),
        });
        ctx.router.attach_component(&domain, handle.clone());
        ctx.stats.session_opened(Role::Component);
        tracing::info!(conn = conn_id, %peer, %domain, "component attached");
        let ending = ready::run(&mut conn, &handle, &ctx).await;
        handle.seal(&ctx.stats);
        ctx.router.detach_component(&domain, conn_id);
        ctx.stats.session_closed(Role::Component);
        ready::close(&mut conn, &domain, &ctx.stats, ending).await;
        tracing::info!(conn = conn_id, %peer, %domain, "component detached");
    }
    .instrument(span)
    .await
}

/// Header and handshake; returns the component's domain, or None after sending a stream error.
async fn handshake(conn: &mut Conn<TcpStream>, ctx: &Context) -> Option<String> {
    let header = match conn.next_frame().await {
        Ok(Frame::StreamOpen(header)) => header,
        Ok(_) => return None,
        Err(e) => {
            refuse_on_error(conn, &ctx.domain, e).await;
            return None;
        }
    };
    let secret_for = |to: &str| {
        ctx.component_secrets
            .iter()
            .find(|(domain, _)| domain.eq_ignore_ascii_case(to))
            .map(|(domain, secret)| (domain.clone(), secret.clone()))
    };
    // XEP-0114 streams carry no version attribute: only namespace and domain are checked.
    let mut header_for_check = header.clone();
    header_for_check
        .version
        .get_or_insert_with(|| "1.0".to_string());
    let to = header.to.clone().unwrap_or_default();
    if let Some(condition) = header_problem(&header_for_check, ns::COMPONENT, |to| {
        secret_for(to).is_some()
    }) {
        let from = if to.is_empty() {
            ctx.domain.as_str()
        } else {
            to.as_str()
        };
        conn.send_stream_error(from, condition, None).await;
        Stats::bump(&ctx.stats.component_handshakes_failed);
        return None;
    }
    let (domain, secret) = secret_for(&to)?;
    let stream_id = new_stream_id();
    conn.send_header(&domain, None, &stream_id).await.ok()?;
    let element = match conn.next_frame().await {
        Ok(Frame::Stanza(element)) => element,
        Ok(_) => return None,
        Err(e) => {
            refuse_on_error(conn, &domain, e).await;
            return None;
        }
    };
    if !element.is("handshake", "")
        || !verify_handshake(&element.text(), &stream_id, secret.expose())
    {
        Stats::bump(&ctx.stats.component_handshakes_failed);
        tracing::info!(domain = %domain, "component handshake refused");
        conn.send_stream_error(&domain, "not-authorized", None)
            .await;
        return None;
    }
    conn.send_raw(b"<handshake/>").await.ok()?;
    Stats::bump(&ctx.stats.component_handshakes_ok);
    Some(domain)
}
