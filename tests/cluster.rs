//! Cluster mode: a real nats-server and real broker processes (the binary), real CPEs and ACS
//! components over TCP/TLS. Each test starts its own NATS server on a free port.

mod common;

use common::binary::{start_binary, wait_listening, with_ops_port, Running};
use common::nats::Nats;
use common::*;
use crbroker::xml::Element;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

struct Node {
    process: Running,
    c2s: SocketAddr,
    component: SocketAddr,
    ops: SocketAddr,
}

/// A broker process in the cluster of `nats`, named `name`, with the default cluster timings.
async fn node(nats: &Nats, name: &str) -> Node {
    node_with(nats, name, "").await
}

/// The same with more `[cluster]` keys.
async fn node_with(nats: &Nats, name: &str, cluster_keys: &str) -> Node {
    let (text, ops) = with_ops_port(&config_text(&TestOptions::default()));
    let text = format!(
        "{text}\n[cluster]\nservers = [\"{}\"]\nnode = \"{name}\"\n{cluster_keys}",
        nats.url()
    );
    let (process, addrs) = start_binary(&text);
    wait_listening(addrs[0]).await;
    wait_listening(addrs[4]).await;
    Node {
        process,
        c2s: addrs[0],
        component: addrs[4],
        ops,
    }
}

impl Node {
    async fn cpe(&self, user: &str) -> (RawPeer, String) {
        RawPeer::login(self.c2s, user, &cpe_password(user), Some("cwmp")).await
    }

    /// The value of a metric (a line `name value`) on this node's /metrics.
    async fn metric(&self, name: &str) -> u64 {
        let metrics = reqwest::get(format!("http://{}/metrics", self.ops))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("{name} missing: {metrics}"))
            .parse()
            .unwrap()
    }

    async fn acs(&self) -> RawPeer {
        let mut acs = RawPeer::component(self.component, COMPONENT_DOMAIN, COMPONENT_SECRET).await;
        acs.expect_handshake_ok().await;
        acs
    }
}

/// Nodes A and B of one NATS.
struct TwoNodes {
    a: Node,
    b: Node,
    /// Last: dropped after the nodes.
    nats: Nats,
}

/// Two nodes, a CPE `cpe_user(cpe)` logged in on B (with its JID), the ACS component on A.
async fn two_nodes(cpe: usize) -> (TwoNodes, RawPeer, String, RawPeer) {
    let nats = Nats::start();
    let (a, b) = (node(&nats, "a").await, node(&nats, "b").await);
    let (cpe, jid) = b.cpe(&cpe_user(cpe)).await;
    let acs = a.acs().await;
    (TwoNodes { a, b, nats }, cpe, jid, acs)
}

fn request(id: &str, to: &str) -> String {
    connection_request(id, to, Some(COMPONENT_DOMAIN), "acs-user", "acs-pass")
}

/// Send connection requests for `to` until one reaches `cpe` (a new session's subscription takes
/// a moment to reach NATS; until then the answer is `service-unavailable`). Returns the ACS's
/// id and the request as the CPE got it.
async fn request_reaching(acs: &mut RawPeer, cpe: &mut RawPeer, to: &str) -> (String, Element) {
    let deadline = Instant::now() + Duration::from_secs(15);
    for n in 0.. {
        let id = format!("cr-{n}");
        acs.send(&request(&id, to)).await;
        tokio::select! {
            seen = cpe.element() => return (id, seen),
            answer = acs.element() => {
                assert_eq!(answer.attr("id"), Some(id.as_str()));
                assert_eq!(error_condition(&answer).as_deref(), Some("service-unavailable"), "{answer:?}");
                assert!(Instant::now() < deadline, "the CPE never became reachable across nodes");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    unreachable!()
}

/// The ACS's next stanza is the `service-unavailable` answer to `id`, within `bound` of `since`.
async fn expect_unavailable(acs: &mut RawPeer, id: &str, since: Instant, bound: Duration) {
    let answer = acs.element().await;
    assert_eq!(answer.attr("id"), Some(id), "{answer:?}");
    assert_eq!(
        error_condition(&answer).as_deref(),
        Some("service-unavailable")
    );
    assert!(since.elapsed() < bound, "{:?}", since.elapsed());
}

/// The CPE answers `seen` with a result; the ACS gets it under its own id `acs_id`.
async fn answer_and_expect_result(
    cpe: &mut RawPeer,
    seen: &Element,
    acs: &mut RawPeer,
    acs_id: &str,
) {
    answer_result(cpe, seen.attr("id").unwrap()).await;
    let answer = acs.element().await;
    assert_eq!(answer.attr("id"), Some(acs_id), "{answer:?}");
    assert_eq!(answer.attr("type"), Some("result"), "{answer:?}");
}

#[tokio::test]
async fn a_request_reaches_a_cpe_on_another_node_and_its_answer_comes_back() {
    let (nodes, mut cpe, jid, mut acs) = two_nodes(1).await;
    let (acs_id, seen) = request_reaching(&mut acs, &mut cpe, &jid).await;
    assert_eq!(seen.attr("to"), Some(jid.as_str()));
    assert_eq!(seen.attr("from"), Some(COMPONENT_DOMAIN));
    let wire_id = seen.attr("id").unwrap().to_string();
    assert!(
        wire_id.starts_with("crb-"),
        "a broker id across nodes: {wire_id}"
    );
    answer_result(&mut cpe, &wire_id).await;
    let answer = acs.element().await;
    assert_eq!(answer.attr("type"), Some("result"), "{answer:?}");
    assert_eq!(answer.attr("id"), Some(acs_id.as_str()));
    assert_eq!(answer.attr("from"), Some(jid.as_str()));
    assert_eq!(answer.attr("to"), Some(COMPONENT_DOMAIN));
    // Once answered, a duplicate answer from the CPE is not delivered a second time.
    answer_result(&mut cpe, &wire_id).await;
    // A CPE logged in nowhere: answered at once (NATS: no responders).
    let started = Instant::now();
    acs.send(&request("nobody", "cpe-0002@example.net/cwmp"))
        .await;
    let offline = acs.element().await;
    assert_eq!(
        offline.attr("id"),
        Some("nobody"),
        "no duplicate answer came first"
    );
    assert_eq!(
        error_condition(&offline).as_deref(),
        Some("service-unavailable")
    );
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    drop(nodes.b);
}

#[tokio::test]
async fn a_remote_session_that_ends_answers_its_pending_request_at_once() {
    let (_nodes, mut cpe, jid, mut acs) = two_nodes(3).await;
    let (acs_id, _) = request_reaching(&mut acs, &mut cpe, &jid).await;
    let started = Instant::now();
    drop(cpe);
    expect_unavailable(&mut acs, &acs_id, started, Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_login_on_another_node_replaces_the_session_and_takes_its_requests() {
    let nats = Nats::start();
    let (a, b) = (node(&nats, "a").await, node(&nats, "b").await);
    let user = cpe_user(4);
    let (mut old, jid) = a.cpe(&user).await;
    let mut acs = b.acs().await;
    // The old session on A has a request pending from B when the new login comes.
    let (pending_id, _) = request_reaching(&mut acs, &mut old, &jid).await;
    let (mut new, new_jid) = b.cpe(&user).await;
    assert_eq!(new_jid, jid, "the same full JID on every node");
    old.expect_stream_error("conflict").await;
    let answer = acs.element().await;
    assert_eq!(answer.attr("id"), Some(pending_id.as_str()));
    assert_eq!(
        error_condition(&answer).as_deref(),
        Some("service-unavailable")
    );
    // Requests now reach the new session, from either node.
    acs.send(&request("to-new", &jid)).await;
    let seen = new.element().await;
    answer_and_expect_result(&mut new, &seen, &mut acs, "to-new").await;
    let mut acs_a = a.acs().await;
    let (id, seen) = request_reaching(&mut acs_a, &mut new, &jid).await;
    answer_and_expect_result(&mut new, &seen, &mut acs_a, &id).await;
}

#[tokio::test]
async fn a_killed_node_has_its_requests_answered_within_the_bound_and_its_cpes_come_back() {
    let nats = Nats::start();
    let (a, mut b) = (node(&nats, "a").await, node(&nats, "b").await);
    let user = cpe_user(5);
    let (mut cpe, jid) = b.cpe(&user).await;
    let mut acs = a.acs().await;
    let (acs_id, _) = request_reaching(&mut acs, &mut cpe, &jid).await;
    // A second node's heartbeat must have been heard before it can be missed: the ack was one.
    let killed = Instant::now();
    b.process.child.kill().unwrap(); // SIGKILL
    b.process.child.wait().unwrap();
    let answer = acs.element().await;
    let waited = killed.elapsed();
    assert_eq!(answer.attr("id"), Some(acs_id.as_str()));
    assert_eq!(
        error_condition(&answer).as_deref(),
        Some("service-unavailable")
    );
    // The stated bound: node_timeout_ms (3 s) plus the 100 ms loss check.
    assert!(waited <= Duration::from_millis(3100 + 400), "{waited:?}");
    // The CPE reconnects to the surviving node and is reachable again.
    assert!(cpe.closed().await);
    let (mut cpe, jid) = a.cpe(&user).await;
    let (id, seen) = request_reaching(&mut acs, &mut cpe, &jid).await;
    answer_and_expect_result(&mut cpe, &seen, &mut acs, &id).await;
}

#[tokio::test]
async fn requests_during_a_nats_restart_get_an_error_and_work_again_after() {
    let (mut nodes, mut cpe, jid, mut acs) = two_nodes(6).await;
    let (pending_id, _) = request_reaching(&mut acs, &mut cpe, &jid).await;
    nodes.nats.stop();
    // The request waiting on node B is answered when A loses NATS: its answer cannot come back.
    let answer = acs.element().await;
    assert_eq!(answer.attr("id"), Some(pending_id.as_str()));
    assert_eq!(
        error_condition(&answer).as_deref(),
        Some("service-unavailable")
    );
    // In the gap: answered at once, never silence.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    acs.send(&request("in-the-gap", &jid)).await;
    let answer = acs.element().await;
    assert_eq!(answer.attr("id"), Some("in-the-gap"));
    assert_eq!(
        error_condition(&answer).as_deref(),
        Some("service-unavailable")
    );
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    nodes.nats.start_again();
    // Both nodes reconnect and re-subscribe: the CPE on B is reachable from A again.
    let (id, seen) = request_reaching(&mut acs, &mut cpe, &jid).await;
    answer_and_expect_result(&mut cpe, &seen, &mut acs, &id).await;
}

#[tokio::test]
async fn a_bare_jid_request_goes_to_the_most_recent_session_in_the_cluster() {
    let nats = Nats::start();
    let (a, b) = (node(&nats, "a").await, node(&nats, "b").await);
    let user = cpe_user(7);
    let password = cpe_password(&user);
    let (mut older, older_jid) = RawPeer::login(a.c2s, &user, &password, Some("r1")).await;
    let mut acs = a.acs().await;
    let bare = format!("{user}@{DOMAIN}");
    // Reachable by its bare JID while it is the only session.
    let (id, seen) = request_reaching(&mut acs, &mut older, &bare).await;
    assert_eq!(seen.attr("to"), Some(older_jid.as_str()));
    answer_and_expect_result(&mut older, &seen, &mut acs, &id).await;
    let (mut newer, newer_jid) = RawPeer::login(b.c2s, &user, &password, Some("r2")).await;
    // B's `bound` event reaches A asynchronously; then A sends bare-JID requests to B even
    // though it holds a session of that account itself.
    tokio::time::sleep(Duration::from_millis(500)).await;
    acs.send(&request("bare", &bare)).await;
    let seen = newer.element().await;
    assert_eq!(seen.attr("to"), Some(newer_jid.as_str()));
    answer_and_expect_result(&mut newer, &seen, &mut acs, "bare").await;
    // The older session is still there for its own full JID.
    acs.send(&request("full", &older_jid)).await;
    let seen = older.element().await;
    answer_and_expect_result(&mut older, &seen, &mut acs, "full").await;
}

#[tokio::test]
async fn unsolicited_cpe_stanzas_reach_an_acs_attached_to_another_node_and_back() {
    let nats = Nats::start();
    let (a, b) = (node(&nats, "a").await, node(&nats, "b").await);
    let mut acs = a.acs().await;
    let (mut cpe, jid) = b.cpe(&cpe_user(8)).await;
    // The ACS's queue subscription on A may take a moment to reach NATS: inform until it arrives.
    let deadline = Instant::now() + Duration::from_secs(10);
    let got = loop {
        cpe.send(&format!(
            "<message to='{COMPONENT_DOMAIN}' id='inform'><body>boot</body></message>"
        ))
        .await;
        let next = tokio::time::timeout(Duration::from_millis(300), acs.element()).await;
        if let Ok(message) = next {
            break message;
        }
        assert!(Instant::now() < deadline, "the stanza never crossed nodes");
    };
    assert_eq!(got.name, "message");
    assert_eq!(
        got.attr("from"),
        Some(jid.as_str()),
        "the true from, stamped on node B"
    );
    // The ACS's reply (a stanza to the CPE's full JID) goes back to node B.
    acs.send(&format!(
        "<message from='{COMPONENT_DOMAIN}' to='{jid}' id='reply'><body>ok</body></message>"
    ))
    .await;
    let reply = cpe.element().await;
    assert_eq!(reply.attr("id"), Some("reply"));
    assert_eq!(reply.attr("from"), Some(COMPONENT_DOMAIN));
}

#[tokio::test]
async fn an_acs_account_and_the_http_api_reach_a_cpe_on_another_node() {
    let (nodes, mut cpe, jid, mut component) = two_nodes(9).await;
    let (id, seen) = request_reaching(&mut component, &mut cpe, &jid).await;
    answer_and_expect_result(&mut cpe, &seen, &mut component, &id).await;
    // An ACS client account on node A (its `from` stamped by A).
    let (mut account, account_jid) =
        RawPeer::login(nodes.a.c2s, ACS_USER, ACS_PASSWORD, Some("acs")).await;
    account
        .send(&connection_request("by-account", &jid, None, "u", "p"))
        .await;
    let seen = cpe.element().await;
    assert_eq!(seen.attr("from"), Some(account_jid.as_str()));
    answer_and_expect_result(&mut cpe, &seen, &mut account, "by-account").await;
    // The HTTP API of node A.
    wait_listening(nodes.a.ops).await;
    let url = format!("http://{}/v1/connection-requests", nodes.a.ops);
    let body = serde_json::json!({"to": jid, "username": "u", "password": "p"});
    let call = tokio::spawn(async move {
        let response = reqwest::Client::new()
            .post(url)
            .bearer_auth(API_TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        (
            response.status(),
            response.json::<serde_json::Value>().await.unwrap(),
        )
    });
    let seen = cpe.element().await;
    answer_result(&mut cpe, seen.attr("id").unwrap()).await;
    let (status, answer) = call.await.unwrap();
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["outcome"], "result", "{answer}");
    assert_eq!(answer["jid"], jid.as_str());
    // Node A's metrics: connected to NATS, three requests sent to another node, three answers
    // relayed back to it.
    assert_eq!(nodes.a.metric("crbroker_cluster_connected").await, 1);
    let sent = nodes.a.metric("crbroker_cluster_requests_sent_total").await;
    assert!(sent >= 3, "{sent}");
    assert_eq!(
        nodes
            .a
            .metric("crbroker_cluster_answers_received_total")
            .await,
        3
    );
}

#[tokio::test]
async fn a_request_no_node_takes_is_answered_at_the_ack_timeout() {
    let (_nodes, mut cpe, jid, mut acs) = two_nodes(1).await;
    let (acs_id, seen) = request_reaching(&mut acs, &mut cpe, &jid).await;
    answer_and_expect_result(&mut cpe, &seen, &mut acs, &acs_id).await;
    // B holds the bare JID but not this resource: it stays silent, and A answers when no reply
    // came within cluster.ack_timeout_ms (default 1000).
    let other = jid.replace("/cwmp", "/elsewhere");
    let started = Instant::now();
    acs.send(&request("other", &other)).await;
    expect_unavailable(&mut acs, "other", started, Duration::from_millis(2000)).await;
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "answered before the ack timeout: {:?}",
        started.elapsed()
    );
    // The CPE got nothing, and its own resource is still reachable.
    let (acs_id, seen) = request_reaching(&mut acs, &mut cpe, &jid).await;
    answer_and_expect_result(&mut cpe, &seen, &mut acs, &acs_id).await;
}

#[tokio::test]
async fn a_slow_cpe_is_acked_and_its_answer_still_comes_back_once() {
    let (nodes, mut cpe, jid, mut acs) = two_nodes(1).await;
    // A prompt answer is the reply to the NATS request itself: B acks nothing.
    let (acs_id, seen) = request_reaching(&mut acs, &mut cpe, &jid).await;
    answer_and_expect_result(&mut cpe, &seen, &mut acs, &acs_id).await;
    assert_eq!(
        nodes
            .b
            .metric("crbroker_cluster_requests_acked_total")
            .await,
        0
    );
    // Answers after the ack delay (250 ms with the default ack_timeout_ms of 1000) and after the
    // requester's ack timeout itself: B acks each in time, A then waits for the relayed answer.
    for (n, delay_ms) in [(1, 600), (2, 1500)] {
        let id = format!("slow-{n}");
        acs.send(&request(&id, &jid)).await;
        let seen = cpe.element().await;
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        answer_and_expect_result(&mut cpe, &seen, &mut acs, &id).await;
        assert_eq!(
            nodes
                .b
                .metric("crbroker_cluster_requests_acked_total")
                .await,
            n
        );
    }
    // Exactly one answer each: nothing else reaches the ACS.
    acs.send(&request("last", &jid)).await;
    let seen = cpe.element().await;
    answer_and_expect_result(&mut cpe, &seen, &mut acs, "last").await;
    assert_eq!(
        nodes
            .a
            .metric("crbroker_cluster_answers_received_total")
            .await,
        4
    );
}

#[tokio::test]
async fn a_node_restarted_under_its_name_has_its_old_requests_answered_at_once() {
    let nats = Nats::start();
    // A long node timeout: only the new run's heartbeat can answer the request this early.
    let slow_loss = "node_timeout_ms = 30000\n";
    let a = node_with(&nats, "a", slow_loss).await;
    let mut b = node_with(&nats, "b", slow_loss).await;
    let (mut cpe, jid) = b.cpe(&cpe_user(10)).await;
    let mut acs = a.acs().await;
    let (acs_id, _) = request_reaching(&mut acs, &mut cpe, &jid).await;
    // A heartbeat of b's first run must have reached A (every 1 s) before the restart.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    b.process.child.kill().unwrap();
    b.process.child.wait().unwrap();
    let killed = Instant::now();
    let _b_again = node_with(&nats, "b", slow_loss).await;
    expect_unavailable(&mut acs, &acs_id, killed, Duration::from_secs(8)).await;
}
