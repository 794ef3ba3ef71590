//! What arrives from other nodes: requests and stanzas for CPEs with sessions here, presence
//! events, stanzas for ACS entities attached here, acks and relayed answers for requests pending
//! here. Other nodes' requests enter this node's router through their proxies ([`super::proxy`]).

use super::proxy::proxy;
use super::subjects::{self, InboxSubject};
use super::{presence, wire, Cluster};
use crate::jid::JidRef;
use crate::ops::metrics::Stats;
use crate::proto::stanza::{self, ErrorType};
use crate::router::Router;
use crate::xml::Element;
use async_nats::{Message, StatusCode};
use futures_util::StreamExt;
use std::sync::Arc;
use std::time::Instant;
use wire::{Header, Kind};

/// A message on a CPE's subject.
pub(super) async fn on_cpe_message(shared: &Arc<Cluster>, message: Message) {
    let Some(router) = shared.router() else {
        return;
    };
    let Some((header, stanza)) = decode(shared, &message) else {
        return;
    };
    match header.kind {
        Kind::Request => {
            let Some(reply) = message.reply.clone() else {
                Stats::bump(&shared.stats.cluster_messages_dropped);
                return;
            };
            let Some(stanza) = stanza else { return };
            let holds = stanza
                .attr("to")
                .and_then(|to| JidRef::parse(to).ok())
                .is_some_and(|to| presence::holds(shared, &router, &to));
            if !holds {
                // Another node holds that session (or nobody does): stay silent.
                return;
            }
            Stats::bump(&shared.stats.cluster_requests_received);
            let proxy = proxy(shared, header.node);
            // Owed a reply before the request goes in: the CPE's answer may come back before
            // `route` returns, and it should find where to go.
            proxy.owe_reply(stanza.attr("id").unwrap_or_default(), reply.clone());
            let answer = match router.route(&proxy.handle, stanza, || true) {
                Ok(answer) => answer,
                Err(for_server) => Some(stanza::error_reply(
                    &for_server,
                    None,
                    "service-unavailable",
                    ErrorType::Cancel,
                )),
            };
            // Taken: the reply (the answer, or an ack) follows from relay_answers or acks.
            let Some(answer) = answer else { return };
            // The router answers with the request's id (its ACS id, here the requester's).
            proxy.take_reply(answer.attr("id").unwrap_or_default());
            let payload = wire::encode(shared.header(Kind::Answer, "", 0), Some(&answer));
            if shared.connected() {
                if let Err(e) = shared.client.publish(reply, payload).await {
                    tracing::debug!("cluster: answer not sent: {e}");
                }
            }
        }
        Kind::Stanza => {
            if let Some(stanza) = stanza {
                let proxy = proxy(shared, header.node);
                let _ = router.route(&proxy.handle, stanza, || true);
            }
        }
        Kind::Bound => {
            presence::remote_bound(shared, &router, header.node, header.jid, header.stamp)
        }
        Kind::Unbound => presence::remote_unbound(shared, header.jid, header.stamp),
        Kind::Ack | Kind::Answer => Stats::bump(&shared.stats.cluster_messages_dropped),
    }
}

/// A stanza for an ACS entity attached here, from a CPE on another node.
pub(super) fn on_acs_message(shared: &Arc<Cluster>, message: Message) {
    let Some(router) = shared.router() else {
        return;
    };
    match decode(shared, &message) {
        Some((header, Some(stanza))) if header.kind == Kind::Stanza => {
            let proxy = proxy(shared, header.node);
            let _ = router.route(&proxy.handle, stanza, || true);
        }
        _ => Stats::bump(&shared.stats.cluster_messages_dropped),
    }
}

/// This node's inbox: replies to its requests, and answers relayed for requests pending here.
pub(super) async fn node_inbox(shared: Arc<Cluster>) {
    let mut subscriber = match shared.client.subscribe(shared.inbox.clone()).await {
        Ok(subscriber) => subscriber,
        Err(e) => {
            tracing::error!("cluster: cannot subscribe this node's inbox: {e}");
            return;
        }
    };
    let mut stop = shared.stop.clone();
    loop {
        let message = tokio::select! {
            message = subscriber.next() => message,
            _ = crate::context::stopped(&mut stop) => return,
        };
        let Some(message) = message else { return };
        let Some(router) = shared.router() else {
            return;
        };
        match subjects::inbox_subject(&shared.node, &message.subject) {
            Some(InboxSubject::Reply(key)) => on_reply(&shared, &router, key, &message),
            Some(InboxSubject::Answers) => match decode(shared.as_ref(), &message) {
                Some((header, Some(answer))) if header.kind == Kind::Answer => {
                    shared.peers.seen(header.node, Instant::now());
                    router.remote_answer(answer);
                }
                _ => Stats::bump(&shared.stats.cluster_messages_dropped),
            },
            None => Stats::bump(&shared.stats.cluster_messages_dropped),
        }
    }
}

/// The reply to request `key`: NATS's "no responders" (no node holds the CPE: offline), an ack
/// (the request now belongs to the node that took it) or the answer itself.
fn on_reply(shared: &Cluster, router: &Router, key: u64, message: &Message) {
    if message.status == Some(StatusCode::NO_RESPONDERS) {
        router.remote_undeliverable(key, "offline");
        return;
    }
    match decode(shared, message) {
        Some((header, _)) if header.kind == Kind::Ack => {
            let node_conn = shared.peers.seen(header.node, Instant::now());
            router.pending.acked(key, node_conn);
        }
        Some((header, Some(answer))) if header.kind == Kind::Answer => {
            shared.peers.seen(header.node, Instant::now());
            router.remote_answer(answer);
        }
        _ => router.remote_undeliverable(key, "malformed reply"),
    }
}

/// Answer the requests whose reply did not come within `cluster.ack_timeout_ms`: nobody took
/// them (the session went away meanwhile, or its node died before acking). Acked or answered
/// ones are left alone.
pub(super) fn expire_unreplied(shared: &Cluster) {
    let now = Instant::now();
    let mut due = Vec::new();
    {
        let mut awaiting = shared.awaiting_reply();
        while let Some(&(deadline, key)) = awaiting.front() {
            if deadline > now {
                break;
            }
            awaiting.pop_front();
            due.push(key);
        }
    }
    if due.is_empty() {
        return;
    }
    if let Some(router) = shared.router() {
        for key in due {
            router.remote_not_taken(key);
        }
    }
}

/// Header and stanza (if any) of a message; None (counted) when malformed.
fn decode<'m>(shared: &Cluster, message: &'m Message) -> Option<(Header<'m>, Option<Element>)> {
    let decoded = wire::decode(&message.payload).and_then(|(header, body)| {
        let stanza = match body.is_empty() {
            true => None,
            false => Some(wire::parse_stanza(body, shared.framer_limits)?),
        };
        Ok((header, stanza))
    });
    match decoded {
        Ok(decoded) => Some(decoded),
        Err(e) => {
            Stats::bump(&shared.stats.cluster_messages_dropped);
            tracing::debug!(subject = %message.subject, "cluster: message dropped: {e}");
            None
        }
    }
}
