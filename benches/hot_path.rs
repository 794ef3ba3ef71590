//! The relay hot path inside the process: framing a connection request, routing it to a CPE and
//! its answer back (pending table included), serialising it. Run: `cargo bench --bench hot_path`.
//! Routing is measured with 1,000 and 100,000 CPEs online to show it does not depend on the count.

use crbroker::ops::metrics::Stats;
use crbroker::outbox::{Outbox, OutboxLimits, Outgoing};
use crbroker::pending::PendingTable;
use crbroker::router::Router;
use crbroker::session::{Role, SessionHandle, SessionInfo};
use crbroker::xml::{ns, writer, Element, Frame, Framer, FramerLimits};
use std::sync::Arc;
use std::time::Duration;

fn main() {
    divan::main();
}

const HEADER: &[u8] = b"<stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams' to='acs.example.net'>";
const REQUEST: &[u8] = b"<iq type='get' id='cr1' from='acs.example.net' to='cpe-000500@example.net/cwmp'><connectionRequest xmlns='urn:broadband-forum-org:cwmp:xmppConnReq-1-0'><username>u</username><password>p</password></connectionRequest></iq>";

#[divan::bench]
fn frame_connection_request(bencher: divan::Bencher) {
    let mut framer = Framer::new(FramerLimits::default(), ns::COMPONENT);
    let mut header = HEADER;
    assert!(matches!(
        framer.next_frame(&mut header),
        Ok(Some(Frame::StreamOpen(_)))
    ));
    bencher.bench_local(|| {
        let mut input = REQUEST;
        match framer.next_frame(&mut input) {
            Ok(Some(Frame::Stanza(element))) => element,
            other => panic!("{other:?}"),
        }
    });
}

fn parsed_request() -> Element {
    let mut framer = Framer::new(FramerLimits::default(), ns::COMPONENT);
    let mut header = HEADER;
    framer.next_frame(&mut header).unwrap();
    let mut input = REQUEST;
    match framer.next_frame(&mut input) {
        Ok(Some(Frame::Stanza(element))) => element,
        other => panic!("{other:?}"),
    }
}

#[divan::bench]
fn serialise_connection_request(bencher: divan::Bencher) {
    let element = parsed_request();
    let mut out = Vec::with_capacity(512);
    bencher.bench_local(|| {
        out.clear();
        writer::write_element(&mut out, &element, ns::CLIENT);
        out.len()
    });
}

struct World {
    router: Router,
    acs: Arc<SessionHandle>,
    cpe: Arc<SessionHandle>,
}

/// The shipped outbox defaults, with `answer_bytes` of answer room.
fn limits(answer_bytes: usize) -> OutboxLimits {
    OutboxLimits {
        stanzas: 64,
        bytes: 128 * 1024,
        answer_bytes,
    }
}

fn world(online: usize) -> World {
    let router = Router::new(
        "example.net",
        &[],
        ["acs.example.net".to_string()],
        PendingTable::new(Duration::from_secs(10), 4, 100_000),
        Arc::new(Stats::default()),
    );
    let mut target = None;
    for i in 0..online {
        let jid = format!("cpe-{i:06}@example.net/cwmp");
        let handle = Arc::new(SessionHandle {
            conn_id: i as u64 + 1,
            jid: jid.clone(),
            role: Role::Cpe,
            outbox: Outbox::new(limits(0)),
            info: SessionInfo::new(None),
        });
        router.bind_client(&format!("cpe-{i:06}@example.net"), handle.clone());
        if i == 500 {
            target = Some(handle);
        }
    }
    let acs = Arc::new(SessionHandle {
        conn_id: u64::MAX,
        jid: "acs.example.net".into(),
        role: Role::Component,
        outbox: Outbox::new(limits(64 << 20)),
        info: SessionInfo::new(None),
    });
    router.attach_component("acs.example.net", acs.clone());
    World {
        router,
        acs,
        cpe: target.expect("at least 501 CPEs"),
    }
}

/// One connection request to a CPE and its result back to the ACS, through the router and the
/// pending table (no sockets).
#[divan::bench(args = [1_000, 100_000])]
fn route_request_and_answer(bencher: divan::Bencher, online: usize) {
    let world = world(online);
    let request = parsed_request();
    bencher.bench_local(|| {
        assert!(world
            .router
            .route(&world.acs, request.clone(), || true)
            .unwrap()
            .is_none());
        let Some(Outgoing::Stanza(delivered)) = world.cpe.outbox.pop() else {
            panic!("request not delivered")
        };
        let answer = Element::stanza("iq")
            .with_attr("type", "result")
            .with_attr("id", delivered.attr("id").unwrap())
            .with_attr("from", world.cpe.jid.as_str())
            .with_attr("to", "acs.example.net");
        assert!(world
            .router
            .route(&world.cpe, answer, || true)
            .unwrap()
            .is_none());
        let Some(Outgoing::Stanza(back)) = world.acs.outbox.pop() else {
            panic!("answer not delivered")
        };
        back
    });
}

/// Reference: rxml's raw parser alone (no namespaces, no tree) over the same bytes.
#[divan::bench]
fn rxml_raw_events(bencher: divan::Bencher) {
    use rxml::{Parse, RawParser};
    let mut parser = RawParser::new();
    let mut header = HEADER;
    while parser.parse(&mut header, false).is_ok_and(|e| e.is_some()) {}
    bencher.bench_local(|| {
        let mut input = REQUEST;
        let mut events = 0;
        while let Ok(Some(_)) = parser.parse(&mut input, false) {
            events += 1;
        }
        events
    });
}
