//! Untrusted input: every attack gets its protocol-correct stream error, the connection is closed,
//! and a connection request to a connected CPE still succeeds afterwards.

mod common;

use common::*;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// A logged-in CPE and an ACS component, to prove the broker still works after an attack.
struct Witness {
    cpe: RawPeer,
    cpe_jid: String,
    acs: RawPeer,
    round: usize,
}

impl Witness {
    async fn new(broker: &TestBroker) -> Witness {
        let (cpe, cpe_jid) = broker.cpe("cpe-0063").await;
        let mut acs =
            RawPeer::component(broker.component, COMPONENT_DOMAIN, COMPONENT_SECRET).await;
        acs.expect_handshake_ok().await;
        Witness {
            cpe,
            cpe_jid,
            acs,
            round: 0,
        }
    }

    async fn connection_request_succeeds(&mut self) {
        self.round += 1;
        let id = format!("witness-{}", self.round);
        self.acs
            .send(&connection_request(
                &id,
                &self.cpe_jid,
                Some(COMPONENT_DOMAIN),
                "u",
                "p",
            ))
            .await;
        let request = self.cpe.element().await;
        let wire = request.attr("id").unwrap();
        answer_result(&mut self.cpe, wire).await;
        let answer = self.acs.element().await;
        assert_eq!(
            (answer.attr("id"), answer.attr("type")),
            (Some(id.as_str()), Some("result"))
        );
    }
}

async fn logged_in(broker: &TestBroker, user: &str) -> RawPeer {
    RawPeer::login(
        broker.addr(STARTTLS),
        user,
        &cpe_password(user),
        Some("cwmp"),
    )
    .await
    .0
}

async fn opened_plain(broker: &TestBroker) -> RawPeer {
    let mut peer = RawPeer::tcp(broker.addr(STARTTLS)).await;
    peer.send(CLIENT_HEADER).await;
    peer.header().await;
    peer.element().await; // features
    peer
}

/// Send a large payload in chunks, stopping quietly when the broker closes the connection.
async fn flood(peer: &mut RawPeer, prefix: &str, total: usize) {
    peer.try_send(prefix.as_bytes()).await.ok();
    let chunk = vec![b'a'; 64 * 1024];
    let mut sent = 0;
    while sent < total {
        if peer.try_send(&chunk).await.is_err() {
            return;
        }
        sent += chunk.len();
    }
}

#[tokio::test]
async fn ten_megabyte_stanza_before_and_after_auth_is_a_policy_violation() {
    let broker = TestBroker::start().await;
    let mut witness = Witness::new(&broker).await;
    let mut before = opened_plain(&broker).await;
    let flood_before = async {
        flood(&mut before, "<message><body>", 10 << 20).await;
        before.expect_stream_error("policy-violation").await;
    };
    flood_before.await;
    let mut after = logged_in(&broker, "cpe-0001").await;
    flood(&mut after, "<message to='acs.example.net'><body>", 10 << 20).await;
    after.expect_stream_error("policy-violation").await;
    witness.connection_request_succeeds().await;
}

#[tokio::test]
async fn billion_laughs_and_external_entities_are_restricted_xml() {
    let broker = TestBroker::start().await;
    let mut witness = Witness::new(&broker).await;
    let laughs = "<?xml version='1.0'?><!DOCTYPE lolz [<!ENTITY lol 'lol'><!ENTITY lol2 '&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;'><!ENTITY lol3 '&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;'>]><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='example.net' version='1.0'>&lol3;";
    let external = "<?xml version='1.0'?><!DOCTYPE foo [<!ENTITY xxe SYSTEM 'file:///etc/passwd'>]><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='example.net' version='1.0'>";
    for attack in [laughs, external] {
        let mut peer = RawPeer::tcp(broker.addr(STARTTLS)).await;
        peer.send(attack).await;
        peer.expect_stream_error("restricted-xml").await;
    }
    // Processing instruction and comment inside an authenticated stream.
    for attack in [
        "<?evil instruction?>",
        "<message to='acs.example.net'><!-- hi --></message>",
    ] {
        let mut peer = logged_in(&broker, "cpe-0002").await;
        peer.send(attack).await;
        peer.expect_stream_error("restricted-xml").await;
    }
    // An entity reference that was never declared: nothing is expanded.
    let mut peer = logged_in(&broker, "cpe-0003").await;
    peer.send("<message to='acs.example.net'><body>&xxe;</body></message>")
        .await;
    peer.expect_stream_error("not-well-formed").await;
    witness.connection_request_succeeds().await;
}

#[tokio::test]
async fn deep_nesting_and_ten_thousand_attributes_are_policy_violations() {
    let broker = TestBroker::start_with(TestOptions {
        max_stanza_bytes: 1 << 20,
        ..TestOptions::default()
    })
    .await;
    let mut witness = Witness::new(&broker).await;
    let mut deep = logged_in(&broker, "cpe-0004").await;
    deep.send(&"<a>".repeat(1000)).await;
    deep.expect_stream_error("policy-violation").await;
    let mut wide = logged_in(&broker, "cpe-0005").await;
    let attrs: String = (0..10_000).map(|i| format!(" a{i}='x'")).collect();
    wide.try_send(format!("<message{attrs}/>").as_bytes())
        .await
        .ok();
    wide.expect_stream_error("policy-violation").await;
    witness.connection_request_succeeds().await;
}

#[tokio::test]
async fn malformed_xml_before_and_after_auth_is_not_well_formed() {
    let broker = TestBroker::start().await;
    let mut witness = Witness::new(&broker).await;
    let mut before = opened_plain(&broker).await;
    before
        .send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'></wrong>")
        .await;
    before.expect_stream_error("not-well-formed").await;
    let mut after = logged_in(&broker, "cpe-0006").await;
    after.send("<message <<< />").await;
    after.expect_stream_error("not-well-formed").await;
    witness.connection_request_succeeds().await;
}

#[tokio::test]
async fn stanzas_before_authentication_are_not_authorized() {
    let broker = TestBroker::start().await;
    let mut witness = Witness::new(&broker).await;
    // Before TLS.
    let mut plain = opened_plain(&broker).await;
    plain
        .send(&connection_request(
            "x",
            "cpe-0063@example.net/cwmp",
            None,
            "u",
            "p",
        ))
        .await;
    plain.expect_stream_error("not-authorized").await;
    // After TLS, before SASL.
    let mut tls = RawPeer::tcp(broker.addr(STARTTLS)).await.starttls().await;
    tls.send(CLIENT_HEADER).await;
    tls.header().await;
    tls.element().await;
    tls.send("<message to='acs.example.net'><body>hi</body></message>")
        .await;
    tls.expect_stream_error("not-authorized").await;
    witness.connection_request_succeeds().await;
}

#[tokio::test]
async fn wrong_namespace_version_and_host_get_their_stream_errors() {
    let broker = TestBroker::start().await;
    let mut witness = Witness::new(&broker).await;
    let cases = [
        ("<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' to='example.net' version='1.0'>", "invalid-namespace"),
        ("<stream:stream xmlns='jabber:client' xmlns:stream='urn:not-streams' to='example.net' version='1.0'>", "invalid-namespace"),
        ("<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='example.net' version='2.0'>", "unsupported-version"),
        ("<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='example.net'>", "unsupported-version"),
        ("<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='elsewhere.example' version='1.0'>", "host-unknown"),
    ];
    for (header, condition) in cases {
        let mut peer = RawPeer::tcp(broker.addr(STARTTLS)).await;
        peer.send(header).await;
        peer.expect_stream_error(condition).await;
    }
    witness.connection_request_succeeds().await;
}

#[tokio::test]
async fn silent_trickling_and_stalled_connections_meet_the_pre_auth_deadline() {
    let broker = TestBroker::start_with(TestOptions {
        pre_auth_timeout_secs: 1,
        ..TestOptions::default()
    })
    .await;
    let mut witness = Witness::new(&broker).await;
    // Silent TCP connection: the broker opens its stream to say why it closes it.
    let mut silent = RawPeer::tcp(broker.addr(STARTTLS)).await;
    silent.expect_stream_error("connection-timeout").await;
    // One byte at a time, 200 ms apart: never finishes a login within the deadline.
    let mut trickle = RawPeer::tcp(broker.addr(STARTTLS)).await;
    let header = CLIENT_HEADER.as_bytes().to_vec();
    let trickler = async {
        for byte in header.iter().take(30) {
            if trickle.try_send(std::slice::from_ref(byte)).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    trickler.await;
    trickle.expect_stream_error("connection-timeout").await;
    // Stalled TLS handshake on the direct-TLS listener: half a ClientHello, then nothing.
    let mut stalled = connect_resetting(broker.addr(DIRECT_TLS)).await;
    stalled
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .unwrap();
    let mut peer = RawPeer::new(Box::new(stalled), crbroker::xml::ns::CLIENT);
    assert!(peer.closed().await, "stalled handshake closed");
    // A login that stops after STARTTLS + header.
    let mut half = RawPeer::tcp(broker.addr(STARTTLS)).await.starttls().await;
    half.send(CLIENT_HEADER).await;
    half.header().await;
    half.element().await; // features
    half.expect_stream_error("connection-timeout").await;
    witness.connection_request_succeeds().await;
}

#[tokio::test]
async fn pre_auth_cap_per_ip_counts_only_unauthenticated_connections() {
    let broker = TestBroker::start_with(TestOptions {
        max_pre_auth_per_ip: 2,
        ..TestOptions::default()
    })
    .await;
    let mut witness = Witness::new(&broker).await; // authenticated: no longer counted
    let _a = opened_plain(&broker).await;
    let _b = opened_plain(&broker).await;
    let mut refused = RawPeer::tcp(broker.addr(STARTTLS)).await;
    assert!(
        refused.closed().await,
        "third pre-auth connection from one IP is closed at accept"
    );
    assert_eq!(broker.stat("connections_refused_cap"), 1);
    drop(_a);
    eventually("slot released", || broker.stat("connections_open") == 3).await;
    let mut again = RawPeer::tcp(broker.addr(STARTTLS)).await;
    again.send(CLIENT_HEADER).await;
    again.header().await;
    witness.connection_request_succeeds().await;
}

#[tokio::test]
async fn sloppy_stanzas_never_end_a_cpe_session() {
    let broker = TestBroker::start().await;
    let mut witness = Witness::new(&broker).await;
    let cpe = &mut witness.cpe;
    cpe.send("<iq type='get'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    let no_id = cpe.element().await;
    assert_eq!(error_condition(&no_id).as_deref(), Some("bad-request"));
    cpe.send("<iq type='get' id='ns'><query xmlns='urn:example:nothing'/></iq>")
        .await;
    assert_eq!(
        error_condition(&cpe.element().await).as_deref(),
        Some("service-unavailable")
    );
    cpe.send("<iq type='result' id='nobody-asked'/>").await;
    cpe.send("<iq type='result' id='nobody-asked' to='acs.example.net'/>")
        .await;
    cpe.send("<iq type='bogus' id='bt'/>").await;
    assert_eq!(
        error_condition(&cpe.element().await).as_deref(),
        Some("bad-request")
    );
    cpe.send("<message><body>to the server</body></message><presence type='unavailable'/>")
        .await;
    cpe.send("<iq type='get' id='bad-to' to='not a jid@@'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    assert_eq!(
        error_condition(&cpe.element().await).as_deref(),
        Some("jid-malformed")
    );
    witness.connection_request_succeeds().await;
}

/// The broker turns on TCP keepalive for every accepted connection (`limits.tcp_keepalive_secs`,
/// default 120 s), so a CPE that vanished without a FIN is found. Read from the kernel: the
/// broker's end of the connection in /proc/net/tcp runs the keepalive timer (`tr` 2) due in about
/// 120 s.
#[tokio::test]
async fn accepted_connections_run_the_tcp_keepalive_timer() {
    let broker = TestBroker::start().await;
    let server = broker.addr(STARTTLS);
    let client = tokio::net::TcpStream::connect(server).await.unwrap();
    let client_port = client.local_addr().unwrap().port();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let wanted = (
        format!(":{:04X}", server.port()),
        format!(":{:04X}", client_port),
    );
    let line = table
        .lines()
        .find(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            fields.len() > 5 && fields[1].ends_with(&wanted.0) && fields[2].ends_with(&wanted.1)
        })
        .unwrap_or_else(|| panic!("the broker's end of the connection is not in /proc/net/tcp"));
    let timer = line.split_whitespace().nth(5).unwrap();
    let (kind, when) = timer.split_once(':').unwrap();
    let ticks = u64::from_str_radix(when, 16).unwrap();
    // USER_HZ is 100 on Linux: ticks / 100 = seconds until the timer fires.
    assert_eq!(kind, "02", "keepalive timer expected, got {timer}: {line}");
    assert!(
        (100 * 100..=120 * 100).contains(&ticks),
        "keepalive due in {} s, expected about 120 s",
        ticks / 100
    );
    drop(client);
}
