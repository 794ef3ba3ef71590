//! One stolen CPE credential cannot flood the ACS: a CPE that sends an ACS entity stanzas as fast
//! as the broker lets it is cut by its rate limit (counted; its IQs get `policy-violation`), while
//! every answer to 100 pending connection requests still reaches the ACS exactly once. And the
//! ACS outbox: unsolicited traffic that fills it never takes the answers' room; an ACS that stops
//! reading past that room is closed and its answers counted, none dropped silently.

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
    /// A component whose socket has a small receive buffer, so that when it stops reading the
    /// broker's queue toward it fills soon.
    SlowComponent,
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
            AcsKind::SlowComponent => {
                let socket = tokio::net::TcpSocket::new_v4().unwrap();
                socket.set_recv_buffer_size(4096).unwrap();
                #[allow(deprecated)] // RST on drop, like connect_resetting
                socket.set_linger(Some(std::time::Duration::ZERO)).unwrap();
                let tcp = socket.connect(broker.component).await.unwrap();
                let mut peer = RawPeer::component_on(tcp, COMPONENT_DOMAIN, COMPONENT_SECRET).await;
                peer.expect_handshake_ok().await;
                Acs {
                    peer,
                    address: COMPONENT_DOMAIN.to_string(),
                    from: Some(COMPONENT_DOMAIN),
                }
            }
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

/// A broker with 100 connection requests from the ACS pending at 25 CPEs, and a flooding CPE.
struct Scene {
    broker: TestBroker,
    cpes: Vec<(RawPeer, String)>,
    /// The broker's ids of each CPE's pending requests.
    wire_ids: Vec<Vec<String>>,
    flooder: RawPeer,
    acs: Acs,
}

async fn scene(options: TestOptions, kind: AcsKind) -> Scene {
    let broker = TestBroker::start_with(options).await;
    let mut cpes = Vec::new();
    for i in 0..CPES {
        cpes.push(broker.cpe(&cpe_user(i)).await);
    }
    let (flooder, _) = broker.cpe(&cpe_user(FLOODER)).await;
    let mut acs = Acs::connect(&broker, kind).await;
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
    Scene {
        broker,
        cpes,
        wire_ids,
        flooder,
        acs,
    }
}

/// Every CPE answers its pending requests with a result.
async fn answer_all(cpes: &mut [(RawPeer, String)], wire_ids: &[Vec<String>]) {
    for ((cpe, _), ids) in cpes.iter_mut().zip(wire_ids) {
        for id in ids {
            answer_result(cpe, id).await;
        }
    }
}

/// What the ACS received: the answers to its requests (each once) and stanzas from the flooder.
#[derive(Default)]
struct Received {
    answers: HashSet<String>,
    unsolicited: u64,
    unsolicited_iqs: u64,
}

impl Received {
    fn note(&mut self, element: Element) {
        let id = element.attr("id").unwrap_or_default().to_string();
        if element.name == "iq" && id.starts_with("cr") {
            assert_eq!(element.attr("type"), Some("result"), "{element:?}");
            assert!(
                self.answers.insert(id),
                "an answer arrived twice: {element:?}"
            );
        } else {
            assert!(
                element
                    .attr("from")
                    .unwrap()
                    .starts_with(&cpe_user(FLOODER)),
                "{element:?}"
            );
            self.unsolicited += 1;
            if element.name == "iq" {
                self.unsolicited_iqs += 1;
            }
        }
    }

    /// Read until every answer is in.
    async fn all_answers(&mut self, acs: &mut RawPeer) {
        while self.answers.len() < REQUESTS {
            match acs.next_frame().await {
                Some(Frame::Stanza(element)) => self.note(element),
                other => panic!("ACS stream ended: {other:?}"),
            }
        }
    }
}

async fn flood_while_requests_are_pending(kind: AcsKind) {
    let Scene {
        broker,
        mut cpes,
        wire_ids,
        flooder,
        mut acs,
    } = scene(TestOptions::default(), kind).await;

    // The flood starts; once it is under way, the CPEs answer.
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let flooding = tokio::spawn(flood(flooder, acs.address.clone(), started_tx));
    started_rx.await.expect("flood started");
    assert!(broker.stat("cpe_to_acs_rate_limited") > 0);
    let answering = tokio::spawn(async move {
        answer_all(&mut cpes, &wire_ids).await;
        cpes
    });

    // The ACS reads every answer, and whatever of the flood got through.
    let mut received = Received::default();
    received.all_answers(&mut acs.peer).await;
    let _cpes = answering.await.unwrap();
    let (_flooder, flood) = flooding.await.unwrap();
    for element in sync(&mut acs.peer, acs.from, "acs-sync").await {
        received.note(element);
    }

    // Every answer arrived exactly once, none was lost.
    assert_eq!(received.answers.len(), REQUESTS);
    assert_eq!(broker.stat("requests_answered_result"), REQUESTS as u64);
    assert_eq!(broker.stat("answers_acs_gone"), 0);
    // The flood was cut: at most the burst (plus a token a minute, should the run be slow) got
    // through; everything else was counted; each cut IQ got its policy-violation.
    let cut = broker.stat("cpe_to_acs_rate_limited");
    let delivered = received.unsolicited;
    println!(
        "flood: {} stanzas sent, {delivered} delivered, {cut} cut; {} of {} IQs answered policy-violation",
        flood.sent,
        flood.iqs_cut.len(),
        flood.iqs_sent
    );
    assert!(delivered >= BURST, "the burst was not delivered");
    assert!(
        delivered <= BURST + 2,
        "{delivered} flood stanzas got through"
    );
    assert_eq!(cut + delivered, flood.sent);
    assert_eq!(
        flood.iqs_cut.len() as u64 + received.unsolicited_iqs,
        flood.iqs_sent
    );
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

/// Flood the ACS (which is not reading) with large messages and an IQ get after every eight,
/// until its outbox is full: the broker drops messages and counts them, and answers an IQ that
/// does not fit with resource-constraint. Returns how many stanzas were sent.
async fn fill_the_acs_outbox(broker: &TestBroker, flooder: &mut RawPeer) -> u64 {
    let body = "x".repeat(8000);
    let mut sent = 0;
    let mut refused_iq = false;
    let deadline = tokio::time::Instant::now() + IO_TIMEOUT;
    while !refused_iq || broker.stat("stanzas_dropped_outbox_full") == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the ACS outbox did not fill after {sent} stanzas"
        );
        let mut text = String::new();
        for _ in 0..8 {
            text.push_str(&format!(
                "<message to='{COMPONENT_DOMAIN}'><body>{body}</body></message>"
            ));
        }
        text.push_str(&format!(
            "<iq type='get' id='full{sent}' to='{COMPONENT_DOMAIN}'><query xmlns='jabber:iq:version'/></iq>"
        ));
        flooder.send(&text).await;
        sent += 9;
        // The flooder's session handles its stanzas in order: after the pong, all were routed.
        for reply in sync(flooder, None, &format!("fill{sent}")).await {
            assert_eq!(
                error_condition(&reply).as_deref(),
                Some("resource-constraint"),
                "{reply:?}"
            );
            refused_iq = true;
        }
    }
    sent
}

/// An ACS that stopped reading (a small receive buffer and no reads), with no rate limit so that
/// the outbox bounds are what is tested: its outbox is full of flood, then the CPEs answer all 100
/// requests. Returns the scene and how many flood stanzas were sent.
async fn stalled_acs_answered(answer_bytes: usize) -> (Scene, u64) {
    let mut scene = scene(
        TestOptions {
            cpe_to_acs_burst: 1_000_000,
            stuck_session_grace_secs: 120,
            acs_outbox_answer_bytes: answer_bytes,
            ..TestOptions::default()
        },
        AcsKind::SlowComponent,
    )
    .await;
    let sent = fill_the_acs_outbox(&scene.broker, &mut scene.flooder).await;
    answer_all(&mut scene.cpes, &scene.wire_ids).await;
    let broker = &scene.broker;
    eventually("all answers routed", || {
        broker.stat("requests_answered_result") == REQUESTS as u64
    })
    .await;
    (scene, sent)
}

/// Unsolicited traffic fills the outbox of an ACS that is not reading; the answers to its 100
/// pending requests still go into their own room and all arrive once it reads again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_acs_outbox_still_takes_every_answer() {
    let (
        Scene {
            broker, mut acs, ..
        },
        sent,
    ) = stalled_acs_answered(64 * 1024 * 1024).await;
    assert_eq!(broker.stat("answers_acs_gone"), 0);
    // The ACS reads again: everything it was owed arrives, once.
    let mut received = Received::default();
    received.all_answers(&mut acs.peer).await;
    for element in sync(&mut acs.peer, acs.from, "acs-sync").await {
        received.note(element);
    }
    let dropped = broker.stat("stanzas_dropped_outbox_full");
    println!(
        "{sent} stanzas (8 KB messages, IQs) sent, {} delivered, {dropped} dropped; {} answers delivered",
        received.unsolicited,
        received.answers.len()
    );
    assert_eq!(received.answers.len(), REQUESTS);
    assert_eq!(received.unsolicited + dropped, sent);
    assert_eq!(broker.stat("answers_acs_gone"), 0);
    broker.shutdown().await;
}

/// The same, with an answer room of only 16 KiB: when the answers outgrow it, the ACS connection
/// (which stopped reading) is closed with resource-constraint and every answer it could not get
/// is counted; none is dropped silently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acs_that_stops_reading_past_its_answer_room_is_closed_and_the_answers_counted() {
    let (
        Scene {
            broker, mut acs, ..
        },
        _,
    ) = stalled_acs_answered(16 * 1024).await;
    eventually("all answers accounted for", || {
        broker.stat("answers_acs_gone") == REQUESTS as u64
    })
    .await;
    assert_eq!(broker.stat("acs_closed_answer_room_full"), 1);
    // Reading again, the ACS gets what was already on its way, then the stream error; no answer.
    loop {
        match acs.peer.next_frame().await {
            Some(Frame::Stanza(e)) if e.name == "error" && e.ns == ns::STREAM => {
                let condition = e.first_child().unwrap();
                assert_eq!(condition.name, "resource-constraint");
                break;
            }
            Some(Frame::Stanza(e)) => assert!(e.name == "message" || e.name == "iq", "{e:?}"),
            other => panic!("expected the stream error, got {other:?}"),
        }
    }
    assert!(acs.peer.closed().await);
    assert_eq!(broker.stat("answers_acs_gone"), REQUESTS as u64);
    broker.shutdown().await;
}
