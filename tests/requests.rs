//! Exactly one answer per connection request: deadlines, CPEs that vanish, ACS clusters,
//! bare-JID delivery, backpressure.

mod common;

use common::peers::{self, Transport};
use common::*;
use futures::{SinkExt, StreamExt};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio_xmpp_component::parsers::iq::Iq;
use tokio_xmpp_component::Stanza;

/// Read `n` connection requests on a raw CPE; returns the wire ids the broker used.
async fn receive_requests(cpe: &mut RawPeer, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..n {
        let request = cpe.element().await;
        assert!(request
            .child("connectionRequest", crbroker::xml::ns::CONN_REQ)
            .is_some());
        ids.push(request.attr("id").unwrap().to_string());
    }
    ids
}

/// Ask the broker for a ping result: everything the broker queued before it has arrived.
async fn ping_server(acs: &mut RawPeer, id: &str) {
    acs.send(&format!("<iq type='get' id='{id}' from='{COMPONENT_DOMAIN}' to='{DOMAIN}'><ping xmlns='urn:xmpp:ping'/></iq>")).await;
    let pong = acs.element().await;
    assert_eq!(
        (pong.attr("id"), pong.attr("type")),
        (Some(id), Some("result")),
        "{}",
        acs.transcript
    );
}

#[tokio::test]
async fn unanswered_request_times_out_and_a_late_answer_is_dropped() {
    let broker = TestBroker::start_with(TestOptions {
        request_timeout_ms: 300,
        ..TestOptions::default()
    })
    .await;
    let (mut cpe, jid) = broker.cpe("cpe-0001").await;
    let mut acs = broker.raw_acs().await;
    let sent = Instant::now();
    acs.send(&connection_request(
        "slow",
        &jid,
        Some(COMPONENT_DOMAIN),
        "u",
        "p",
    ))
    .await;
    let wire_ids = receive_requests(&mut cpe, 1).await;
    let answer = acs.element().await;
    let waited = sent.elapsed();
    assert_eq!(answer.attr("id"), Some("slow"));
    assert_eq!(answer.attr("from"), Some(jid.as_str()));
    assert_eq!(
        error_condition(&answer).as_deref(),
        Some("remote-server-timeout")
    );
    let error = answer.child_elements().find(|e| e.name == "error").unwrap();
    assert_eq!(error.attr("type"), Some("wait"));
    assert!(
        waited >= Duration::from_millis(300),
        "answered before the deadline: {waited:?}"
    );
    // The CPE answers after the deadline: dropped and counted, never delivered.
    answer_result(&mut cpe, &wire_ids[0]).await;
    eventually("late answer counted", || {
        broker.stat("answers_late_or_unknown") == 1
    })
    .await;
    ping_server(&mut acs, "after-late").await;
    assert_eq!(broker.stat("requests_timed_out"), 1);
}

async fn reset_with_pending(pending: usize) {
    let broker = TestBroker::start_with(TestOptions {
        max_pending_per_cpe: 32,
        ..TestOptions::default()
    })
    .await;
    let (mut cpe, jid) = broker.cpe("cpe-0002").await;
    let mut acs = broker.raw_acs().await;
    for i in 0..pending {
        acs.send(&connection_request(
            &format!("r{i}"),
            &jid,
            Some(COMPONENT_DOMAIN),
            "u",
            "p",
        ))
        .await;
    }
    receive_requests(&mut cpe, pending).await;
    let reset_at = Instant::now();
    drop(cpe); // SO_LINGER 0: the broker sees a TCP reset
    let mut answered = HashMap::new();
    for _ in 0..pending {
        let answer = acs.element().await;
        assert_eq!(
            error_condition(&answer).as_deref(),
            Some("service-unavailable"),
            "{}",
            acs.transcript
        );
        assert!(
            answered
                .insert(answer.attr("id").unwrap().to_string(), ())
                .is_none(),
            "duplicate answer"
        );
    }
    let took = reset_at.elapsed();
    assert_eq!(answered.len(), pending);
    // The deadline is 10 s; these came from the session's end. (Figure printed for the record.)
    println!("{pending} pending requests answered {took:?} after the reset");
    assert!(took < Duration::from_secs(2), "{took:?}");
    ping_server(&mut acs, "nothing-more").await;
    assert_eq!(broker.stat("requests_cpe_gone"), pending as u64);
}

#[tokio::test]
async fn cpe_reset_with_one_request_pending_answers_it_at_once() {
    reset_with_pending(1).await;
}

#[tokio::test]
async fn cpe_reset_with_twenty_requests_pending_answers_all_at_once() {
    reset_with_pending(20).await;
}

#[tokio::test]
async fn replaced_cpe_session_answers_its_pending_requests() {
    let broker = TestBroker::start().await;
    let (mut old, jid) = broker.cpe("cpe-0003").await;
    let mut acs = broker.raw_acs().await;
    for i in 0..3 {
        acs.send(&connection_request(
            &format!("old{i}"),
            &jid,
            Some(COMPONENT_DOMAIN),
            "u",
            "p",
        ))
        .await;
    }
    receive_requests(&mut old, 3).await;
    let (_new, new_jid) = broker.cpe("cpe-0003").await;
    assert_eq!(jid, new_jid);
    for _ in 0..3 {
        let answer = acs.element().await;
        assert_eq!(
            error_condition(&answer).as_deref(),
            Some("service-unavailable")
        );
    }
    old.expect_stream_error("conflict").await;
}

#[tokio::test]
async fn two_component_connections_each_get_their_own_answers() {
    let broker = TestBroker::start().await;
    let (mut cpe, jid) = broker.cpe("cpe-0004").await;
    let mut a = broker.raw_acs().await;
    let mut b = broker.raw_acs().await;
    // Both ACS nodes use the same id: the broker keeps them apart.
    a.send(&connection_request(
        "same",
        &jid,
        Some(COMPONENT_DOMAIN),
        "from-a",
        "p",
    ))
    .await;
    b.send(&connection_request(
        "same",
        &jid,
        Some(COMPONENT_DOMAIN),
        "from-b",
        "p",
    ))
    .await;
    for _ in 0..2 {
        let request = cpe.element().await;
        let user = request
            .child("connectionRequest", crbroker::xml::ns::CONN_REQ)
            .unwrap()
            .child("username", crbroker::xml::ns::CONN_REQ)
            .unwrap()
            .text();
        // Answer A's with a result and B's with an error, to tell them apart on arrival.
        let wire = request.attr("id").unwrap();
        if user == "from-a" {
            answer_result(&mut cpe, wire).await;
        } else {
            cpe.send(&format!("<iq type='error' id='{wire}' to='{COMPONENT_DOMAIN}'><error type='cancel'><not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>")).await;
        }
    }
    let answer_a = a.element().await;
    assert_eq!(
        (answer_a.attr("id"), answer_a.attr("type")),
        (Some("same"), Some("result"))
    );
    let answer_b = b.element().await;
    assert_eq!(
        (answer_b.attr("id"), answer_b.attr("type")),
        (Some("same"), Some("error"))
    );
    ping_server(&mut a, "a-nothing-more").await;
    ping_server(&mut b, "b-nothing-more").await;

    // A asks, then drops before the CPE answers: the answer is dropped and counted; B goes on.
    a.send(&connection_request(
        "orphan",
        &jid,
        Some(COMPONENT_DOMAIN),
        "u",
        "p",
    ))
    .await;
    let wire = receive_requests(&mut cpe, 1).await;
    drop(a);
    eventually("component A detached", || {
        broker.stat("sessions_online") == 2
    })
    .await;
    answer_result(&mut cpe, &wire[0]).await;
    eventually("orphan answer counted", || {
        broker.stat("answers_acs_gone") == 1
    })
    .await;
    b.send(&connection_request(
        "b-after",
        &jid,
        Some(COMPONENT_DOMAIN),
        "u",
        "p",
    ))
    .await;
    let wire = receive_requests(&mut cpe, 1).await;
    answer_result(&mut cpe, &wire[0]).await;
    let answer = b.element().await;
    assert_eq!(
        (answer.attr("id"), answer.attr("type")),
        (Some("b-after"), Some("result"))
    );
}

#[tokio::test]
async fn unsolicited_stanzas_for_a_component_domain_reach_one_live_connection() {
    let broker = TestBroker::start().await;
    let (mut cpe, _) = broker.cpe("cpe-0005").await;
    let mut a = broker.raw_acs().await;
    let b = broker.raw_acs().await;
    drop(b);
    eventually("component B detached", || {
        broker.stat("sessions_online") == 2
    })
    .await;
    for i in 0..3 {
        cpe.send(&format!(
            "<message to='{COMPONENT_DOMAIN}' id='m{i}'><body>hello</body></message>"
        ))
        .await;
        let message = a.element().await;
        assert_eq!(
            message.attr("id"),
            Some(format!("m{i}").as_str()),
            "delivered to the live connection"
        );
    }
}

#[tokio::test]
async fn request_to_a_bare_jid_reaches_the_most_recently_bound_session() {
    let broker = TestBroker::start().await;
    let (mut first, _) = RawPeer::login(
        broker.addr(STARTTLS),
        "cpe-0006",
        "pw-cpe-0006",
        Some("one"),
    )
    .await;
    let (mut second, second_jid) = RawPeer::login(
        broker.addr(STARTTLS),
        "cpe-0006",
        "pw-cpe-0006",
        Some("two"),
    )
    .await;
    let mut acs = broker.raw_acs().await;
    acs.send(&connection_request(
        "bare",
        "cpe-0006@example.net",
        Some(COMPONENT_DOMAIN),
        "u",
        "p",
    ))
    .await;
    let request = second.element().await;
    assert_eq!(request.attr("to"), Some(second_jid.as_str()));
    answer_result(&mut second, request.attr("id").unwrap()).await;
    let answer = acs.element().await;
    assert_eq!(
        (answer.attr("id"), answer.attr("from")),
        (Some("bare"), Some(second_jid.as_str()))
    );
    // The first session got nothing.
    first
        .send("<iq type='get' id='first-ping'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    assert_eq!(first.element().await.attr("id"), Some("first-ping"));
}

#[tokio::test]
async fn per_cpe_limit_answers_resource_constraint_at_once() {
    let broker = TestBroker::start_with(TestOptions {
        max_pending_per_cpe: 2,
        ..TestOptions::default()
    })
    .await;
    let (mut cpe, jid) = broker.cpe("cpe-0007").await;
    let mut acs = broker.raw_acs().await;
    for i in 0..3 {
        acs.send(&connection_request(
            &format!("l{i}"),
            &jid,
            Some(COMPONENT_DOMAIN),
            "u",
            "p",
        ))
        .await;
    }
    let answer = acs.element().await;
    assert_eq!(answer.attr("id"), Some("l2"));
    assert_eq!(
        error_condition(&answer).as_deref(),
        Some("resource-constraint")
    );
    let error = answer.child_elements().find(|e| e.name == "error").unwrap();
    assert_eq!(error.attr("type"), Some("wait"));
    let wire = receive_requests(&mut cpe, 2).await;
    for id in wire {
        answer_result(&mut cpe, &id).await;
    }
    let mut ids: Vec<String> = Vec::new();
    for _ in 0..2 {
        ids.push(acs.element().await.attr("id").unwrap().to_string());
    }
    ids.sort();
    assert_eq!(ids, ["l0", "l1"]);
}

/// A CPE that stops reading its socket while requests keep coming: the requests that do not fit
/// are answered `resource-constraint`, the stuck session is closed after the grace period and its
/// pending requests answered; another CPE is served throughout; every request gets one answer.
#[tokio::test]
async fn stuck_cpe_does_not_hurt_others_and_every_request_is_answered() {
    const REQUESTS: usize = 20_000;
    let broker = TestBroker::start_with(TestOptions {
        outbox_stanzas: 16,
        max_pending_per_cpe: 1_000_000,
        stuck_session_grace_secs: 2,
        request_timeout_ms: 60_000,
        ..TestOptions::default()
    })
    .await;
    // The stuck CPE logs in and then never reads again.
    let (_stuck, stuck_jid) = broker.cpe("cpe-0008").await;
    let (healthy_client, healthy_jid) = peers::client(
        broker.addr(STARTTLS),
        "cpe-0009@example.net/cwmp",
        "pw-cpe-0009",
        Transport::StartTls,
    )
    .await;
    let healthy = peers::spawn_emulated_cpe(healthy_client, "u", "p");
    let acs = peers::component::connect(broker.component, COMPONENT_DOMAIN, COMPONENT_SECRET)
        .await
        .unwrap();
    let (mut tx, mut rx) = acs.split();
    let reader = tokio::spawn(async move {
        let mut answers: HashMap<String, String> = HashMap::new();
        let mut healthy_results = 0;
        while answers.len() < REQUESTS + 1 {
            let Ok(Some(Stanza::Iq(iq))) =
                tokio::time::timeout(Duration::from_secs(20), rx.next()).await
            else {
                panic!("answers stopped after {}", answers.len());
            };
            let (id, outcome) = match iq {
                Iq::Result { id, .. } => (id, "result".to_string()),
                Iq::Error { id, error, .. } => (id, format!("{:?}", error.defined_condition)),
                other => panic!("unexpected {other:?}"),
            };
            if id == "healthy" {
                healthy_results += 1;
            }
            assert!(
                answers.insert(id.clone(), outcome).is_none(),
                "duplicate answer for {id}"
            );
        }
        (answers, healthy_results)
    });
    // Large requests, paced, so the stuck CPE's socket buffers really fill up.
    let padding = "x".repeat(1024);
    let payload = || peers::component::connection_request_payload(&padding, "p");
    for i in 0..REQUESTS {
        let iq = Iq::Get {
            from: Some(COMPONENT_DOMAIN.parse().unwrap()),
            to: Some(stuck_jid.parse().unwrap()),
            id: format!("s{i}"),
            payload: payload(),
        };
        tx.feed(Stanza::Iq(iq)).await.unwrap();
        if i % 8 == 7 {
            tx.flush().await.unwrap();
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        if i == REQUESTS / 2 {
            // Meanwhile a request to a healthy CPE is answered by that CPE.
            let iq = Iq::Get {
                from: Some(COMPONENT_DOMAIN.parse().unwrap()),
                to: Some(healthy_jid.to_string().parse().unwrap()),
                id: "healthy".into(),
                payload: peers::component::connection_request_payload("u", "p"),
            };
            tx.feed(Stanza::Iq(iq)).await.unwrap();
        }
    }
    tx.flush().await.unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .unwrap();
    let Ok((answers, healthy_results)) = outcome else {
        panic!(
            "reader failed; broker counters: {:?}",
            broker.stats.snapshot()
        );
    };
    assert_eq!(answers.len(), REQUESTS + 1);
    assert_eq!(healthy_results, 1);
    assert_eq!(answers["healthy"], "result");
    let mut by_outcome: HashMap<&str, usize> = HashMap::new();
    for outcome in answers.values() {
        *by_outcome.entry(outcome.as_str()).or_default() += 1;
    }
    println!("outcomes: {by_outcome:?}");
    assert!(
        by_outcome.get("ResourceConstraint").copied().unwrap_or(0) > 0,
        "{by_outcome:?}"
    );
    assert!(
        by_outcome.get("ServiceUnavailable").copied().unwrap_or(0) > 0,
        "{by_outcome:?}"
    );
    assert_eq!(broker.stat("sessions_stuck_closed"), 1);
    assert!(broker.broker.as_ref().unwrap().router.pending.is_empty());
    healthy.abort();
}

/// Toward the CPE a request keeps the ACS's id; a second request with the same id pending on the
/// same CPE gets a broker id (`crb-<run>-<n>`), and each ACS still sees its own id on its answer.
/// Broker ids of two broker processes (runs) differ.
#[tokio::test]
async fn the_acs_id_reaches_the_cpe_unless_it_collides() {
    let mut runs = Vec::new();
    for _ in 0..2 {
        let broker = TestBroker::start().await;
        let (mut cpe, jid) = broker.cpe("cpe-0001").await;
        let mut acs_a = broker.raw_acs().await;
        let mut acs_b = broker.raw_acs().await;
        // The same id from two ACS connections, to the same CPE.
        let request = connection_request("same", &jid, Some(COMPONENT_DOMAIN), "u", "p");
        acs_a.send(&request).await;
        let first = receive_requests(&mut cpe, 1).await.remove(0);
        assert_eq!(first, "same", "the CPE sees the ACS's own id");
        acs_b.send(&request).await;
        let second = receive_requests(&mut cpe, 1).await.remove(0);
        assert!(
            second.starts_with("crb-") && second != "same",
            "a colliding id gets a broker id: {second}"
        );
        // Answer the second first: each answer goes to the ACS connection that asked, with its id.
        answer_result(&mut cpe, &second).await;
        answer_result(&mut cpe, &first).await;
        for acs in [&mut acs_a, &mut acs_b] {
            let answer = acs.element().await;
            assert_eq!(
                (answer.attr("id"), answer.attr("type")),
                (Some("same"), Some("result"))
            );
        }
        // Once the first is answered, the id is free again and reaches the CPE as it is.
        acs_a.send(&request).await;
        assert_eq!(receive_requests(&mut cpe, 1).await.remove(0), "same");
        let run = second.rsplit_once('-').unwrap().0.to_string();
        runs.push(run);
        broker.shutdown().await;
    }
    assert_ne!(runs[0], runs[1], "broker ids must not repeat across runs");
}
