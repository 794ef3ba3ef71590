//! The ready loop: a bound session's life. One `select!` over the socket, the outbox and the
//! shutdown signal; stanzas are stamped with the sender's true address and handed to the router.

use super::{Conn, ConnError, Role, SessionHandle, Transport};
use crate::context::Context;
use crate::jid::JidRef;
use crate::ops::metrics::Stats;
use crate::outbox::Outgoing;
use crate::proto::stanza::{self, ErrorType, IqType, Kind};
use crate::ratelimit::Bucket;
use crate::xml::{ns, Element, Frame};
use std::sync::Arc;
use std::time::Instant;

/// How a ready session ended.
#[derive(Debug)]
pub enum Ending {
    /// The peer closed its stream (`</stream:stream>`): answer with ours.
    PeerClosed,
    /// The connection is gone (reset, TLS error, write failure): nothing more to send.
    Gone(String),
    /// The peer closed its transport cleanly (TLS close_notify, or TCP FIN on a component
    /// stream) without closing the XML stream: close ours the same way.
    TransportClosed,
    /// Send this stream error, then close.
    StreamError(&'static str, Option<&'static str>),
    /// Already sent (outbox close, e.g. `<conflict/>`).
    Sent,
}

pub async fn run<S: Transport>(
    conn: &mut Conn<S>,
    handle: &Arc<SessionHandle>,
    ctx: &Context,
) -> Ending {
    let mut shutdown = ctx.shutdown.clone();
    // This session's allowance for unsolicited stanzas to ACS entities (used by CPE sessions
    // only): owned by this task, so checking it takes no lock.
    let mut to_acs = Bucket::default();
    loop {
        // Frames already buffered first: a read may carry several stanzas.
        loop {
            match conn.buffered_frame() {
                Ok(None) => break,
                Ok(Some(Frame::Stanza(element))) => {
                    if let Some(ending) = on_stanza(conn, handle, ctx, &mut to_acs, element).await {
                        return ending;
                    }
                }
                Ok(Some(Frame::StreamClose)) => return Ending::PeerClosed,
                Ok(Some(Frame::StreamOpen(_))) => {
                    return Ending::StreamError("not-well-formed", None)
                }
                Err(ConnError::Frame(e)) => {
                    tracing::debug!("stream error: {e}");
                    return Ending::StreamError(e.condition(), None);
                }
                Err(e) => return Ending::Gone(e.to_string()),
            }
        }
        if !conn.framer.in_stanza() {
            conn.release_idle_memory();
        }
        tokio::select! {
            biased;
            _ = crate::context::stopped(&mut shutdown) => {
                // Answers queued for this connection (e.g. the broker's answers to pending
                // requests) go out before the stream closes.
                while let Some(item) = handle.outbox.pop() {
                    if let Outgoing::Stanza(element) = item {
                        if conn.send_element(&element).await.is_err() {
                            break;
                        }
                    }
                }
                return Ending::StreamError("system-shutdown", None);
            }
            _ = handle.outbox.notified() => {
                while let Some(item) = handle.outbox.pop() {
                    match item {
                        Outgoing::Stanza(element) => {
                            if let Err(e) = conn.send_element(&element).await {
                                if matches!(e, ConnError::WriteStuck) {
                                    Stats::bump(&ctx.stats.sessions_stuck_closed);
                                    tracing::info!(jid = %handle.jid, conn = handle.conn_id, "closing a session that stopped reading");
                                }
                                return Ending::Gone(e.to_string());
                            }
                        }
                        Outgoing::Close(condition) => {
                            conn.send_stream_error(&ctx.domain, condition, None).await;
                            Stats::bump(&ctx.stats.stream_errors_sent);
                            return Ending::Sent;
                        }
                    }
                }
            }
            filled = conn.fill() => {
                match filled {
                    Ok(()) => {}
                    Err(ConnError::Eof) => return Ending::TransportClosed,
                    Err(e) => return Ending::Gone(e.to_string()),
                }
            }
        }
    }
}

/// Send whatever the ending calls for.
pub async fn close<S: Transport>(conn: &mut Conn<S>, domain: &str, stats: &Stats, ending: Ending) {
    match ending {
        Ending::PeerClosed => conn.close().await,
        Ending::Gone(reason) => tracing::debug!("connection gone: {reason}"),
        Ending::TransportClosed => conn.shutdown_transport().await,
        Ending::StreamError(condition, text) => {
            Stats::bump(&stats.stream_errors_sent);
            conn.send_stream_error(domain, condition, text).await
        }
        Ending::Sent => {}
    }
    tracing::debug!("session ended");
}

/// One stanza from the peer: check and stamp `from`, then route or answer as the server.
async fn on_stanza<S: Transport>(
    conn: &mut Conn<S>,
    handle: &Arc<SessionHandle>,
    ctx: &Context,
    to_acs: &mut Bucket,
    mut element: Element,
) -> Option<Ending> {
    let Some(kind) = Kind::of(&element) else {
        return Some(Ending::StreamError("unsupported-stanza-type", None));
    };
    if let Err(ending) = stamp_from(&mut element, handle) {
        return Some(ending);
    }
    let may_send_unsolicited = || to_acs.take(ctx.cpe_to_acs, Instant::now());
    let reply = match ctx.router.route(handle, element, may_send_unsolicited) {
        Ok(reply) => reply,
        Err(for_server) => server_answer(handle, ctx, kind, &for_server),
    };
    if let Some(reply) = reply {
        if let Err(e) = conn.send_element(&reply).await {
            return Some(Ending::Gone(e.to_string()));
        }
    }
    None
}

/// RFC 6120 section 8.1.2.1: the server stamps a client's `from`; a `from` the sender may not
/// use ends the stream with `<invalid-from/>`. Components must put a JID of their domain in `from`.
fn stamp_from(element: &mut Element, handle: &SessionHandle) -> Result<(), Ending> {
    match handle.role {
        Role::Cpe | Role::AcsAccount => {
            if let Some(from) = element.attr("from") {
                let ok = match JidRef::parse(from) {
                    Ok(jid) => {
                        let normalized = jid.normalized();
                        normalized == handle.jid
                            || (jid.resource.is_none()
                                && handle.jid.starts_with(&normalized)
                                && handle.jid.as_bytes().get(normalized.len()) == Some(&b'/'))
                    }
                    Err(_) => false,
                };
                if !ok {
                    return Err(Ending::StreamError("invalid-from", None));
                }
            }
            element.set_attr("from", handle.jid.as_str());
            Ok(())
        }
        Role::Component | Role::Node => {
            let ok = element
                .attr("from")
                .and_then(|from| JidRef::parse(from).ok())
                .is_some_and(|jid| jid.domain_is(&handle.jid));
            if ok {
                Ok(())
            } else {
                Err(Ending::StreamError("invalid-from", None))
            }
        }
    }
}

/// Stanzas addressed to the server itself.
fn server_answer(
    handle: &SessionHandle,
    ctx: &Context,
    kind: Kind,
    element: &Element,
) -> Option<Element> {
    if kind != Kind::Iq {
        // Initial presence, presence to the server, messages to the server: accepted, nothing to do.
        return None;
    }
    let server = ctx.domain.as_str();
    let Some(iq_type) = IqType::of(element) else {
        return Some(stanza::error_reply(
            element,
            Some(server),
            "bad-request",
            ErrorType::Modify,
        ));
    };
    if !iq_type.is_request() {
        // A result or error nobody asked for (we send no requests to clients): ignore.
        return None;
    }
    if element.attr("id").is_none() {
        return Some(stanza::error_reply(
            element,
            Some(server),
            "bad-request",
            ErrorType::Modify,
        ));
    }
    let payload = element.first_child();
    let from_server = if element.attr("to").is_some() {
        element.attr("to").unwrap_or(server)
    } else {
        server
    };
    match payload {
        Some(p) if p.is("ping", ns::PING) && iq_type == IqType::Get => {
            Some(stanza::iq_result(element, from_server))
        }
        Some(p) if p.is("session", ns::SESSION) && iq_type == IqType::Set => {
            Some(stanza::iq_result(element, from_server))
        }
        Some(p)
            if p.is("query", ns::ROSTER)
                && iq_type == IqType::Get
                && handle.role != Role::Component =>
        {
            // No rosters here: an empty one keeps clients that ask for it happy.
            let mut result = stanza::iq_result(element, from_server);
            result.push_child(Element::new(ns::ROSTER, "query"));
            Some(result)
        }
        _ => Some(stanza::error_reply(
            element,
            Some(from_server),
            "service-unavailable",
            ErrorType::Cancel,
        )),
    }
}
