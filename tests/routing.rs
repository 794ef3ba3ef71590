//! Connection requests end to end: ACS (component or client account) -> broker -> CPE -> back.

mod common;

use common::peers::{self, component::Acs, Transport};
use common::*;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio_xmpp_component::parsers::iq::Iq;
use tokio_xmpp_component::parsers::stanza_error::DefinedCondition;

async fn acs(broker: &TestBroker) -> Acs {
    peers::component::connect(broker.component, COMPONENT_DOMAIN, COMPONENT_SECRET)
        .await
        .expect("component handshake")
}

async fn online_cpe(broker: &TestBroker, i: usize) -> (tokio::task::JoinHandle<usize>, String) {
    let user = cpe_user(i);
    let (client, jid) = peers::client(
        broker.addr(STARTTLS),
        &format!("{user}@{DOMAIN}/cwmp"),
        &cpe_password(&user),
        Transport::StartTls,
    )
    .await;
    let username: &'static str = Box::leak(format!("cr-{user}").into_boxed_str());
    (
        peers::spawn_emulated_cpe(client, username, "cr-secret"),
        jid.to_string(),
    )
}

#[tokio::test]
async fn component_handshake_ok_wrong_secret_and_unknown_domain() {
    let broker = TestBroker::start().await;
    acs(&broker).await;
    assert_eq!(broker.stat("component_handshakes_ok"), 1);

    let mut wrong = RawPeer::component(broker.component, COMPONENT_DOMAIN, "not-the-secret").await;
    wrong.expect_stream_error("not-authorized").await;

    let mut unknown = RawPeer::tcp(broker.component).await;
    unknown
        .send("<stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams' to='other.example.net'>")
        .await;
    unknown.expect_stream_error("host-unknown").await;
    assert_eq!(broker.stat("component_handshakes_failed"), 2);
}

#[tokio::test]
async fn connection_request_success_through_a_component() {
    let broker = TestBroker::start().await;
    let (cpe, jid) = online_cpe(&broker, 1).await;
    let mut acs = acs(&broker).await;
    peers::component::send_request(&mut acs, "cr1", &jid, "cr-cpe-0001", "cr-secret").await;
    match peers::component::next_iq(&mut acs).await {
        Iq::Result { id, from, to, .. } => {
            assert_eq!(id, "cr1", "the ACS sees its own id");
            assert_eq!(from.unwrap().to_string(), jid);
            assert_eq!(to.unwrap().to_string(), COMPONENT_DOMAIN);
        }
        other => panic!("expected a result, got {other:?}"),
    }
    assert_eq!(broker.stat("requests_answered_result"), 1);
    cpe.abort();
}

#[tokio::test]
async fn cpe_not_authorized_is_relayed_verbatim_with_the_echoed_request() {
    let broker = TestBroker::start().await;
    let (cpe, jid) = online_cpe(&broker, 2).await;
    let mut acs = broker.raw_acs().await;
    acs.send(&connection_request(
        "cr-bad",
        &jid,
        Some(COMPONENT_DOMAIN),
        "cr-cpe-0002",
        "wrong-password",
    ))
    .await;
    let answer = acs.element().await;
    assert_eq!(answer.attr("type"), Some("error"));
    assert_eq!(answer.attr("id"), Some("cr-bad"));
    assert_eq!(answer.attr("from"), Some(jid.as_str()));
    assert_eq!(error_condition(&answer).as_deref(), Some("not-authorized"));
    let echoed = answer
        .child("connectionRequest", crbroker::xml::ns::CONN_REQ)
        .expect("echoed request intact");
    assert_eq!(
        echoed
            .child("username", crbroker::xml::ns::CONN_REQ)
            .unwrap()
            .text(),
        "cr-cpe-0002"
    );
    assert_eq!(
        echoed
            .child("password", crbroker::xml::ns::CONN_REQ)
            .unwrap()
            .text(),
        "wrong-password"
    );
    // The CPE's own text and the error's other children pass through untouched.
    assert!(
        acs.transcript.contains("bad credentials"),
        "{}",
        acs.transcript
    );
    cpe.abort();
}

#[tokio::test]
async fn odd_cpe_errors_are_relayed_verbatim() {
    // icwmp writes `not-autorized`: the broker does not judge, the ACS does.
    let broker = TestBroker::start().await;
    let (mut cpe, jid) = broker.cpe("cpe-0003").await;
    let mut acs = broker.raw_acs().await;
    acs.send(&connection_request(
        "odd",
        &jid,
        Some(COMPONENT_DOMAIN),
        "u",
        "p",
    ))
    .await;
    let request = cpe.element().await;
    let wire_id = request.attr("id").unwrap().to_string();
    cpe.send(&format!("<iq type='error' id='{wire_id}' to='{COMPONENT_DOMAIN}'><error type='cancel'><not-autorized xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>")).await;
    let answer = acs.element().await;
    assert_eq!(answer.attr("id"), Some("odd"));
    assert_eq!(error_condition(&answer).as_deref(), Some("not-autorized"));
}

#[tokio::test]
async fn offline_unknown_and_wrong_resource_targets_get_service_unavailable_at_once() {
    let broker = TestBroker::start().await;
    let (cpe, _jid) = online_cpe(&broker, 4).await;
    let mut acs = acs(&broker).await;
    let targets = [
        ("offline", "cpe-0005@example.net/cwmp"),
        ("unknown", "nobody@example.net/cwmp"),
        ("wrong-resource", "cpe-0004@example.net/not-cwmp"),
    ];
    for (id, to) in targets {
        let started = Instant::now();
        peers::component::send_request(&mut acs, id, to, "u", "p").await;
        match peers::component::next_iq(&mut acs).await {
            Iq::Error {
                id: got,
                error,
                from,
                ..
            } => {
                assert_eq!(got, id);
                assert_eq!(
                    error.defined_condition,
                    DefinedCondition::ServiceUnavailable,
                    "{id}"
                );
                assert_eq!(
                    error.type_,
                    tokio_xmpp_component::parsers::stanza_error::ErrorType::Cancel
                );
                assert_eq!(from.unwrap().to_string(), to);
            }
            other => panic!("{id}: expected an error, got {other:?}"),
        }
        // The request deadline is 10 s: an answer this fast was given at once, not by the timer.
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{id} took {:?}",
            started.elapsed()
        );
    }
    assert_eq!(broker.stat("requests_offline"), 3);
    cpe.abort();
}

#[tokio::test]
async fn acs_client_account_sends_a_connection_request_like_genieacs() {
    let broker = TestBroker::start().await;
    let (cpe, jid) = online_cpe(&broker, 6).await;
    // GenieACS logs in with PLAIN, sends no <session/> and no presence.
    let (mut acs, acs_jid) = RawPeer::login(
        broker.addr(STARTTLS),
        ACS_USER,
        ACS_PASSWORD,
        Some("genieacs"),
    )
    .await;
    acs.send(&connection_request(
        "gacs1",
        &jid,
        None,
        "cr-cpe-0006",
        "cr-secret",
    ))
    .await;
    let answer = acs.element().await;
    assert_eq!(answer.attr("type"), Some("result"), "{}", acs.transcript);
    assert_eq!(answer.attr("id"), Some("gacs1"));
    assert_eq!(answer.attr("from"), Some(jid.as_str()));
    assert_eq!(answer.attr("to"), Some(acs_jid.as_str()));
    // Offline target: answered by the broker at once.
    acs.send(&connection_request(
        "gacs2",
        "cpe-0007@example.net/cwmp",
        None,
        "u",
        "p",
    ))
    .await;
    let offline = acs.element().await;
    assert_eq!(offline.attr("id"), Some("gacs2"));
    assert_eq!(
        error_condition(&offline).as_deref(),
        Some("service-unavailable")
    );
    cpe.abort();
}

#[tokio::test]
async fn cpe_to_cpe_is_refused_and_not_delivered() {
    let broker = TestBroker::start().await;
    let (mut a, _) = broker.cpe("cpe-0008").await;
    let (mut b, b_jid) = broker.cpe("cpe-0009").await;
    a.send(&connection_request("evil", &b_jid, None, "u", "p"))
        .await;
    let refused = a.element().await;
    assert_eq!(refused.attr("type"), Some("error"));
    assert_eq!(refused.attr("id"), Some("evil"));
    assert_eq!(
        error_condition(&refused).as_deref(),
        Some("service-unavailable")
    );
    a.send(&format!(
        "<message to='{b_jid}'><body>hi</body></message><presence to='{b_jid}'/>"
    ))
    .await;
    a.send("<iq type='get' id='bare'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    assert_eq!(
        a.element().await.attr("id"),
        Some("bare"),
        "message and presence dropped silently"
    );
    // B received none of it: its next element answers its own ping.
    b.send("<iq type='get' id='b-ping'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    assert_eq!(b.element().await.attr("id"), Some("b-ping"));
    assert_eq!(broker.stat("stanzas_refused"), 3);
    assert_eq!(broker.stat("requests_relayed"), 0);
}

#[tokio::test]
async fn two_hundred_concurrent_requests_to_fifty_cpes_get_matching_answers() {
    let broker = TestBroker::start_with(TestOptions {
        max_pending_per_cpe: 8,
        ..TestOptions::default()
    })
    .await;
    let mut cpes = Vec::new();
    let mut jids = Vec::new();
    for i in 10..60 {
        let (task, jid) = online_cpe(&broker, i).await;
        cpes.push(task);
        jids.push(jid);
    }
    let mut acs = acs(&broker).await;
    let mut expected = HashMap::new();
    for n in 0..200 {
        let index = n % jids.len();
        let id = format!("bulk-{n}");
        // Every 10th request carries wrong credentials: those must come back not-authorized.
        let user = if n % 10 == 0 {
            "wrong".to_string()
        } else {
            format!("cr-{}", cpe_user(index + 10))
        };
        peers::component::send_request(&mut acs, &id, &jids[index], &user, "cr-secret").await;
        expected.insert(id, (jids[index].clone(), n % 10 != 0));
    }
    let mut seen = HashMap::new();
    for _ in 0..200 {
        let iq = peers::component::next_iq(&mut acs).await;
        let (id, from, ok) = match iq {
            Iq::Result { id, from, .. } => (id, from, true),
            Iq::Error {
                id, from, error, ..
            } => {
                assert_eq!(
                    error.defined_condition,
                    DefinedCondition::NotAuthorized,
                    "{id}"
                );
                (id, from, false)
            }
            other => panic!("unexpected {other:?}"),
        };
        let (want_from, want_ok) = expected
            .get(&id)
            .unwrap_or_else(|| panic!("answer for unknown id {id}"));
        assert_eq!(&from.unwrap().to_string(), want_from, "cross-talk on {id}");
        assert_eq!(ok, *want_ok, "{id}");
        assert!(
            seen.insert(id.clone(), ()).is_none(),
            "duplicate answer for {id}"
        );
    }
    assert_eq!(seen.len(), 200);
    assert_eq!(
        broker.stat("requests_answered_result") + broker.stat("requests_answered_error"),
        200
    );
    for cpe in cpes {
        cpe.abort();
    }
}

#[tokio::test]
async fn cpe_answer_without_to_still_reaches_the_requester() {
    // Some devices answer without a `to` (or address the server): the answer belongs to the
    // pending request, so it goes to the ACS that asked.
    let broker = TestBroker::start().await;
    let (mut cpe, jid) = broker.cpe("cpe-0012").await;
    let mut acs = broker.raw_acs().await;
    for (id, to) in [("no-to", ""), ("to-server", " to='example.net'")] {
        acs.send(&connection_request(
            id,
            &jid,
            Some(COMPONENT_DOMAIN),
            "u",
            "p",
        ))
        .await;
        let request = cpe.element().await;
        let wire = request.attr("id").unwrap();
        cpe.send(&format!("<iq type='result' id='{wire}'{to}/>"))
            .await;
        let answer = acs.element().await;
        assert_eq!(
            (answer.attr("id"), answer.attr("type")),
            (Some(id), Some("result"))
        );
        assert_eq!(answer.attr("from"), Some(jid.as_str()));
    }
}
