//! One stolen CPE credential cannot flood the ACS: a CPE that sends an ACS entity stanzas as fast
//! as the broker lets it is cut by its rate limit (counted; its IQs get `policy-violation`), while
//! every answer to 100 pending connection requests still reaches the ACS exactly once.

mod common;

use common::*;
use crbroker::xml::{ns, Element, Frame};
use std::collections::HashSet;

const CPES: usize = 25;
const PER_CPE: usize = 4; // the default requests.max_pending_per_cpe
const REQUESTS: usize = CPES * PER_CPE;
const FLOODER: usize = 63;
const CHUNKS: usize = 30;
const PER_CHUNK: usize = 120; // 40 messages, 40 presences, 40 IQ gets
/// The shipped defaults: limits.cpe_to_acs_burst and cpe_to_acs_per_minute.
const BURST: u64 = 10;

/// Which kind of ACS entity the CPE floods.
#[derive(Clone, Copy)]
enum AcsKind {
    Component,
    Account,
}

struct Acs {
    peer: RawPeer,
    /// What a CPE writes in `to` to reach this ACS.
    address: String,
    /// The `from` the ACS must put on its stanzas (components only).
    from: Option<&'static str>,
}

impl Acs {
    async fn connect(broker: &TestBroker, kind: AcsKind) -> Acs {
        match kind {
            AcsKind::Component => Acs {
                peer: broker.raw_acs().await,
                address: COMPONENT_DOMAIN.to_string(),
                from: Some(COMPONENT_DOMAIN),
            },
            AcsKind::Account => {
                let (peer, _jid) =
                    RawPeer::login(broker.addr(STARTTLS), ACS_USER, ACS_PASSWORD, Some("acs"))
                        .await;
                Acs {
                    peer,
                    address: format!("{ACS_USER}@{DOMAIN}"),
                    from: None,
                }
            }
        }
    }
}

/// A ping to the server; returns every stanza that arrived before its answer. The broker handles
/// a connection's stanzas in order, so when the pong is here everything sent before it was handled.
async fn sync(peer: &mut RawPeer, from: Option<&str>, id: &str) -> Vec<Element> {
    let from = from.map(|f| format!(" from='{f}'")).unwrap_or_default();
    peer.send(&format!(
        "<iq type='get' id='{id}' to='{DOMAIN}'{from}><ping xmlns='urn:xmpp:ping'/></iq>"
    ))
    .await;
    let mut before = Vec::new();
    loop {
        let element = peer.element().await;
        if element.attr("id") == Some(id) {
            assert_eq!(element.attr("type"), Some("result"), "{}", peer.transcript);
            return before;
        }
        before.push(element);
    }
}

/// What the flooding CPE sent and what came back to it.
#[derive(Default, Debug)]
struct Flood {
    sent: u64,
    iqs_sent: u64,
    /// IQ ids answered `policy-violation` (type wait).
    iqs_cut: HashSet<String>,
}

/// Send `CHUNKS` writes of `PER_CHUNK` stanzas to `to`, each write followed by a sync that also
/// collects the broker's answers. `started` fires after the first chunk.
async fn flood(
    mut cpe: RawPeer,
    to: String,
    started: tokio::sync::oneshot::Sender<()>,
) -> (RawPeer, Flood) {
    let mut result = Flood::default();
    let mut started = Some(started);
    for chunk in 0..CHUNKS {
        let mut text = String::new();
        for i in 0..PER_CHUNK / 3 {
            let n = chunk * PER_CHUNK + i;
            text.push_str(&format!(
                "<message to='{to}' type='chat'><body>flood {n}</body></message>\
                 <presence to='{to}'/>\
                 <iq type='get' id='f{n}' to='{to}'><query xmlns='jabber:iq:version'/></iq>"
            ));
        }
        cpe.send(&text).await;
        result.sent += PER_CHUNK as u64;
        result.iqs_sent += (PER_CHUNK / 3) as u64;
        for reply in sync(&mut cpe, None, &format!("sync{chunk}")).await {
            assert_eq!(reply.attr("type"), Some("error"), "{}", cpe.transcript);
            assert_eq!(error_condition(&reply).as_deref(), Some("policy-violation"));
            let error = reply.child_elements().find(|e| e.name == "error").unwrap();
            assert_eq!(error.attr("type"), Some("wait"));
            let id = reply.attr("id").unwrap().to_string();
            assert!(id.starts_with('f'));
            assert!(result.iqs_cut.insert(id), "two answers to one IQ");
        }
        if let Some(started) = started.take() {
            let _ = started.send(());
        }
    }
    (cpe, result)
}

async fn flood_while_requests_are_pending(kind: AcsKind) {
    let broker = TestBroker::start().await;
    let mut cpes = Vec::new();
    for i in 0..CPES {
        cpes.push(broker.cpe(&cpe_user(i)).await);
    }
    let (flooder, _) = broker.cpe(&cpe_user(FLOODER)).await;
    let mut acs = Acs::connect(&broker, kind).await;

    // 100 connection requests, all pending at the CPEs.
    let mut text = String::new();
    for (i, (_, jid)) in cpes.iter().enumerate() {
        for k in 0..PER_CPE {
            text.push_str(&connection_request(
                &format!("cr{}", i * PER_CPE + k),
                jid,
                acs.from,
                "u",
                "p",
            ));
        }
    }
    acs.peer.send(&text).await;
    let mut wire_ids = Vec::new();
    for (cpe, _) in cpes.iter_mut() {
        let mut ids = Vec::new();
        for _ in 0..PER_CPE {
            let request = cpe.element().await;
            assert!(request.child("connectionRequest", ns::CONN_REQ).is_some());
            ids.push(request.attr("id").unwrap().to_string());
        }
        wire_ids.push(ids);
    }
    assert_eq!(broker.stat("requests_relayed"), REQUESTS as u64);

    // The flood starts; once it is under way, the CPEs answer.
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let flooding = tokio::spawn(flood(flooder, acs.address.clone(), started_tx));
    started_rx.await.expect("flood started");
    assert!(broker.stat("cpe_to_acs_rate_limited") > 0);
    let answering = tokio::spawn(async move {
        for ((cpe, _), ids) in cpes.iter_mut().zip(&wire_ids) {
            for id in ids {
                answer_result(cpe, id).await;
            }
        }
        cpes
    });

    // The ACS reads every answer, and whatever of the flood got through.
    let mut answered = HashSet::new();
    let mut unsolicited = 0u64;
    let mut unsolicited_iqs = 0u64;
    let note = |element: Element,
                answered: &mut HashSet<String>,
                unsolicited: &mut u64,
                unsolicited_iqs: &mut u64| {
        let id = element.attr("id").unwrap_or_default().to_string();
        if element.name == "iq" && id.starts_with("cr") {
            assert_eq!(element.attr("type"), Some("result"), "{element:?}");
            assert!(answered.insert(id), "an answer arrived twice: {element:?}");
        } else {
            assert!(
                element
                    .attr("from")
                    .unwrap()
                    .starts_with(&cpe_user(FLOODER)),
                "{element:?}"
            );
            *unsolicited += 1;
            if element.name == "iq" {
                *unsolicited_iqs += 1;
            }
        }
    };
    while answered.len() < REQUESTS {
        match acs.peer.next_frame().await {
            Some(Frame::Stanza(element)) => note(
                element,
                &mut answered,
                &mut unsolicited,
                &mut unsolicited_iqs,
            ),
            other => panic!("ACS stream ended: {other:?}"),
        }
    }
    let _cpes = answering.await.unwrap();
    let (_flooder, flood) = flooding.await.unwrap();
    for element in sync(&mut acs.peer, acs.from, "acs-sync").await {
        note(
            element,
            &mut answered,
            &mut unsolicited,
            &mut unsolicited_iqs,
        );
    }

    // Every answer arrived exactly once, none was lost.
    assert_eq!(answered.len(), REQUESTS);
    assert_eq!(broker.stat("requests_answered_result"), REQUESTS as u64);
    assert_eq!(broker.stat("answers_acs_gone"), 0);
    // The flood was cut: at most the burst (plus a token a minute, should the run be slow) got
    // through; everything else was counted; each cut IQ got its policy-violation.
    let cut = broker.stat("cpe_to_acs_rate_limited");
    println!(
        "flood: {} stanzas sent, {unsolicited} delivered, {cut} cut; {} of {} IQs answered policy-violation",
        flood.sent,
        flood.iqs_cut.len(),
        flood.iqs_sent
    );
    assert!(unsolicited >= BURST, "the burst was not delivered");
    assert!(
        unsolicited <= BURST + 2,
        "{unsolicited} flood stanzas got through"
    );
    assert_eq!(cut + unsolicited, flood.sent);
    assert_eq!(flood.iqs_cut.len() as u64 + unsolicited_iqs, flood.iqs_sent);
    assert_eq!(broker.stat("stanzas_dropped_outbox_full"), 0);
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cpe_flooding_the_component_is_cut_and_all_answers_arrive() {
    flood_while_requests_are_pending(AcsKind::Component).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cpe_flooding_an_acs_account_is_cut_and_all_answers_arrive() {
    flood_while_requests_are_pending(AcsKind::Account).await;
}
