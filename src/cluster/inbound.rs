//! What arrives from other nodes: requests and stanzas for CPEs with sessions here, presence
//! events, stanzas for ACS entities attached here, acks and relayed answers for requests pending
//! here. Other nodes' requests enter this node's router through their proxies ([`super::proxy`]).

use super::proxy::proxy;
use super::{presence, wire, Cluster};
use crate::jid::JidRef;
use crate::ops::metrics::Stats;
use crate::proto::stanza::{self, ErrorType};
use crate::xml::Element;
use async_nats::client::RequestErrorKind;
use async_nats::Message;
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
            let id: Box<str> = stanza.attr("id").unwrap_or_default().into();
            proxy.owe_reply(&id, reply.clone());
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
            proxy.take_reply(&id);
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

/// This node's inbox: answers relayed for requests pending here.
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
        match decode(shared.as_ref(), &message) {
            Some((header, Some(answer))) if header.kind == Kind::Answer => {
                shared.peers.seen(header.node, Instant::now());
                router.remote_answer(answer);
            }
            _ => Stats::bump(&shared.stats.cluster_messages_dropped),
        }
    }
}

/// Send request `key` to the CPE's subject and act on the reply: an ack ties it to the node
/// that took it; an answer answers it; no responders or no taker answers it
/// `service-unavailable`.
pub(super) async fn await_ack(
    shared: Arc<Cluster>,
    subject: String,
    payload: bytes::Bytes,
    key: u64,
) {
    let request = async_nats::Request::new()
        .payload(payload)
        .timeout(Some(shared.ack_timeout));
    let result = shared.client.send_request(subject, request).await;
    let Some(router) = shared.router() else {
        return;
    };
    let reply = match result {
        Ok(reply) => reply,
        Err(e) => {
            let outcome = match e.kind() {
                RequestErrorKind::NoResponders => "offline",
                RequestErrorKind::TimedOut => "offline (no node took it)",
                _ => {
                    Stats::bump(&shared.stats.cluster_unavailable);
                    "cluster unavailable"
                }
            };
            router.remote_undeliverable(key, outcome);
            return;
        }
    };
    match decode(shared.as_ref(), &reply) {
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
