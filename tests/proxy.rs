//! PROXY protocol on the c2s listeners: raw v1 and v2 headers from a test peer and HAProxy (the
//! Debian package) in front, the address they name in the sessions API and under the per-address
//! caps, peers outside `proxy_from` refused, bad headers closed without harm to the broker.

mod common;

use common::*;
use proxy_header::{ProxiedAddress, ProxyHeader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// The test config with PROXY protocol on the STARTTLS and direct TLS listeners (0 and 1),
/// accepted from `proxy_from`; listeners 2 and 3 stay plain.
fn proxy_config_text(options: &TestOptions, proxy_from: &str) -> String {
    let text = config_text(options);
    let mut patched = String::new();
    let mut rest = text.as_str();
    for kind in ["kind = \"starttls\"\n", "kind = \"direct_tls\"\n"] {
        let at = rest.find(kind).expect("listener in the test config") + kind.len();
        patched.push_str(&rest[..at]);
        patched.push_str(&format!(
            "proxy_protocol = true\nproxy_from = [\"{proxy_from}\"]\n"
        ));
        rest = &rest[at..];
    }
    patched.push_str(rest);
    patched
}

async fn start_text(text: &str) -> TestBroker {
    let config = crbroker::config::Config::parse(text, "proxy-test.toml", pki().dir.clone())
        .expect("proxy test config");
    TestBroker::start_config(config).await
}

async fn start(options: TestOptions, proxy_from: &str) -> TestBroker {
    start_text(&proxy_config_text(&options, proxy_from)).await
}

fn header(source: &str, v2: bool) -> Vec<u8> {
    let source: SocketAddr = source.parse().unwrap();
    let destination = match source {
        SocketAddr::V4(_) => "192.0.2.1:5222",
        SocketAddr::V6(_) => "[2001:db8::1]:5222",
    };
    let addresses = ProxiedAddress::stream(source, destination.parse().unwrap());
    let mut bytes = Vec::new();
    let header = ProxyHeader::with_address(addresses);
    match v2 {
        true => header.encode_v2(&mut bytes).unwrap(),
        false => header.encode_v1(&mut bytes).unwrap(),
    }
    bytes
}

/// A TCP connection to `addr` that has sent `bytes` first.
async fn connect_with(addr: SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut tcp = connect_resetting(addr).await;
    tcp.write_all(bytes).await.unwrap();
    tcp
}

/// STARTTLS, PLAIN login and bind over `tcp`; returns the peer and its JID.
async fn login_starttls(tcp: TcpStream, user: &str) -> (RawPeer, String) {
    let mut peer = RawPeer::new(Box::new(tcp), crbroker::xml::ns::CLIENT)
        .starttls()
        .await;
    peer.auth_plain(user, &cpe_password(user)).await.unwrap();
    let jid = peer.bind(Some("cwmp")).await;
    (peer, jid)
}

/// Direct TLS, PLAIN login and bind over `tcp`.
async fn login_direct_tls(tcp: TcpStream, user: &str) -> (RawPeer, String) {
    let name = rustls::pki_types::ServerName::try_from(DOMAIN).unwrap();
    let tls = tls_connector().connect(name, tcp).await.unwrap();
    let mut peer = RawPeer::new(Box::new(tls), crbroker::xml::ns::CLIENT);
    peer.auth_plain(user, &cpe_password(user)).await.unwrap();
    let jid = peer.bind(Some("cwmp")).await;
    (peer, jid)
}

/// The `peer` the sessions API shows for `user`'s (one) session.
async fn session_peer(broker: &TestBroker, user: &str) -> String {
    let answer: serde_json::Value = reqwest::Client::new()
        .get(format!("http://{}/v1/sessions/{user}@{DOMAIN}", broker.ops))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["online"], true, "{answer}");
    answer["sessions"][0]["peer"]
        .as_str()
        .expect("peer")
        .to_string()
}

/// v1 and v2 headers on both listener kinds: the session is the header's client's, in the
/// sessions API. A LOCAL header (a load balancer's health check) leaves the socket's address.
#[tokio::test]
async fn headers_name_the_session_peer() {
    let broker = start(TestOptions::default(), "127.0.0.1/32").await;
    let cases = [
        ("cpe-0001", "203.0.113.7:40001", false, STARTTLS),
        ("cpe-0002", "203.0.113.7:40002", true, STARTTLS),
        ("cpe-0003", "[2001:db8::7]:40003", false, DIRECT_TLS),
        ("cpe-0004", "[2001:db8::7]:40004", true, DIRECT_TLS),
    ];
    let mut peers = Vec::new();
    for (user, source, v2, listener) in cases {
        let tcp = connect_with(broker.addr(listener), &header(source, v2)).await;
        peers.push(match listener {
            STARTTLS => login_starttls(tcp, user).await,
            _ => login_direct_tls(tcp, user).await,
        });
        assert_eq!(session_peer(&broker, user).await, source, "v2 {v2}");
    }

    let mut local = Vec::new();
    ProxyHeader::with_local().encode_v2(&mut local).unwrap();
    let tcp = connect_with(broker.addr(STARTTLS), &local).await;
    let socket_address = tcp.local_addr().unwrap().to_string();
    let _health = login_starttls(tcp, "cpe-0005").await;
    assert_eq!(session_peer(&broker, "cpe-0005").await, socket_address);

    // A listener without PROXY protocol is unchanged: a header there is XML garbage before
    // the stream header.
    let mut garbage = header("203.0.113.9:1", false);
    garbage.extend_from_slice(CLIENT_HEADER.as_bytes());
    let mut plain = RawPeer::new(
        Box::new(connect_with(broker.addr(SCRAM_SHA1_TLS12), &garbage).await),
        crbroker::xml::ns::CLIENT,
    );
    assert!(plain.closed().await);
    assert_eq!(broker.stat("proxy_headers_invalid"), 0);
}

/// Login delays count failures by the header's address: failures "from" 203.0.113.7 delay its
/// next login, not one "from" 203.0.113.8 behind the same balancer.
#[tokio::test]
async fn login_delays_follow_the_header_address() {
    let options = TestOptions {
        login_delay_address_free: 2,
        login_delay_base_ms: 100,
        login_delay_address_max_ms: 100,
        sasl_failure_floor_ms: 0,
        ..TestOptions::default()
    };
    let broker = start(options, "127.0.0.1/32").await;
    for (i, user) in ["cpe-0010", "cpe-0011"].into_iter().enumerate() {
        let tcp = connect_with(
            broker.addr(STARTTLS),
            &header(&format!("203.0.113.7:{i}"), true),
        )
        .await;
        let mut peer = RawPeer::new(Box::new(tcp), crbroker::xml::ns::CLIENT)
            .starttls()
            .await;
        assert_eq!(
            peer.auth_plain(user, "wrong").await.unwrap_err(),
            "not-authorized"
        );
    }
    assert_eq!(broker.stat("logins_delayed"), 0);
    let other = connect_with(broker.addr(STARTTLS), &header("203.0.113.8:1", false)).await;
    let _other = login_starttls(other, "cpe-0001").await;
    assert_eq!(
        broker.stat("logins_delayed"),
        0,
        "another address is not delayed"
    );
    let same = connect_with(broker.addr(STARTTLS), &header("203.0.113.7:9", false)).await;
    let _same = login_starttls(same, "cpe-0002").await;
    assert_eq!(
        broker.stat("logins_delayed"),
        1,
        "the failing address is delayed"
    );
}

/// A peer that has sent a header and its stream header and got the broker's answer: admitted.
async fn held_from(broker: &TestBroker, source: &str) -> RawPeer {
    let tcp = connect_with(broker.addr(STARTTLS), &header(source, true)).await;
    RawPeer::greeted(Box::new(tcp)).await
}

/// A plain connection (no PROXY header) that got the broker's stream header and features.
async fn held_plain(addr: SocketAddr) -> RawPeer {
    RawPeer::greeted(Box::new(connect_resetting(addr).await)).await
}

/// The per-address pre-auth cap counts the header's address, not the balancer's.
#[tokio::test]
async fn per_address_caps_count_the_header_address() {
    let options = TestOptions {
        max_pre_auth_per_ip: 2,
        ..TestOptions::default()
    };
    let broker = start(options, "127.0.0.1/32").await;
    let first = held_from(&broker, "203.0.113.7:1001").await;
    let _second = held_from(&broker, "203.0.113.7:1002").await;

    let tcp = connect_with(broker.addr(STARTTLS), &header("203.0.113.7:1003", false)).await;
    let mut third = RawPeer::new(Box::new(tcp), crbroker::xml::ns::CLIENT);
    assert!(third.closed().await, "a third connection from one address");
    assert_eq!(broker.stat("connections_refused_cap"), 1);

    // Another client behind the same balancer, and the balancer itself on a plain listener,
    // are not held back by 203.0.113.7's count.
    let _other = held_from(&broker, "203.0.113.8:1004").await;
    let _other_too = held_from(&broker, "203.0.113.8:1005").await;
    let _plain = held_plain(broker.addr(SCRAM_SHA256_TLS12)).await;
    assert_eq!(broker.stat("connections_refused_cap"), 1);
    // The held connection's count is given back when it closes.
    drop(first);
    eventually("a slot for 203.0.113.7 again", || {
        broker.stat("connections_open") == 4
    })
    .await;
    let _again = held_from(&broker, "203.0.113.7:1006").await;
}

/// Connections still waiting for their header count against `max_pre_auth_total`, so a
/// balancer (or whoever is inside `proxy_from`) cannot hold more than that many open.
#[tokio::test]
async fn connections_awaiting_a_header_count_against_the_total_cap() {
    let text = proxy_config_text(&TestOptions::default(), "127.0.0.1/32")
        .replace("[limits]\n", "[limits]\nmax_pre_auth_total = 2\n");
    let broker = start_text(&text).await;
    let _waiting = [
        connect_resetting(broker.addr(STARTTLS)).await,
        connect_resetting(broker.addr(DIRECT_TLS)).await,
    ];
    eventually("two connections open", || {
        broker.stat("connections_open") == 2
    })
    .await;
    let mut third = RawPeer::new(
        Box::new(connect_with(broker.addr(STARTTLS), &header("203.0.113.7:1", true)).await),
        crbroker::xml::ns::CLIENT,
    );
    assert!(third.closed().await);
    assert_eq!(broker.stat("connections_refused_cap"), 1);
    assert_eq!(broker.stat("connections_accepted"), 0);
}

/// A peer outside `proxy_from` is closed before the broker reads a byte; the other listeners
/// serve on.
#[tokio::test]
async fn peers_outside_proxy_from_are_refused() {
    let broker = start(TestOptions::default(), "10.0.0.0/8").await;
    for listener in [STARTTLS, DIRECT_TLS] {
        let tcp = connect_with(broker.addr(listener), &header("203.0.113.7:1", true)).await;
        let mut peer = RawPeer::new(Box::new(tcp), crbroker::xml::ns::CLIENT);
        assert!(peer.closed().await);
    }
    assert_eq!(broker.stat("connections_refused_proxy_source"), 2);
    assert_eq!(broker.stat("connections_accepted"), 0);
    let _plain = held_plain(broker.addr(SCRAM_SHA256_TLS12)).await;
    assert_eq!(broker.stat("connections_accepted"), 1);
}

/// A PROXY header sent to a listener without `proxy_protocol` (a load balancer configured for
/// it in front of a broker that is not) is refused `<not-well-formed/>` at once, not held until
/// the pre-auth deadline (20 s here).
#[tokio::test]
async fn a_proxy_header_to_a_listener_without_proxy_protocol_is_refused_at_once() {
    let broker = start(TestOptions::default(), "127.0.0.1/32").await;
    for v2 in [false, true] {
        let started = std::time::Instant::now();
        let tcp = connect_with(
            broker.addr(SCRAM_SHA256_TLS12),
            &header("203.0.113.7:1", v2),
        )
        .await;
        let mut peer = RawPeer::new(Box::new(tcp), crbroker::xml::ns::CLIENT);
        peer.expect_stream_error("not-well-formed").await;
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "v2 {v2}: {:?}",
            started.elapsed()
        );
    }
    let _plain = held_plain(broker.addr(SCRAM_SHA256_TLS12)).await;
}

/// Garbage, an endless v1 line, an oversized v2 header and a header cut short are closed and
/// counted; a header that never comes is closed at the pre-auth deadline. The broker serves the
/// next client normally.
#[tokio::test]
async fn bad_headers_are_closed_and_counted() {
    let options = TestOptions {
        pre_auth_timeout_secs: 1,
        ..TestOptions::default()
    };
    let broker = start(options, "127.0.0.1/32").await;
    let mut oversized = header("203.0.113.7:1", true)[..14].to_vec();
    oversized.extend_from_slice(&2000u16.to_be_bytes());
    oversized.resize(16 + 2000, 0);
    let endless = format!("PROXY TCP4 203.0.113.7 192.0.2.1 1 5222{}", " ".repeat(200));
    let bad: [&[u8]; 4] = [
        CLIENT_HEADER.as_bytes(),
        endless.as_bytes(),
        &oversized,
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    ];
    for (i, bytes) in bad.iter().enumerate() {
        let mut peer = RawPeer::new(
            Box::new(connect_with(broker.addr(STARTTLS), bytes).await),
            crbroker::xml::ns::CLIENT,
        );
        assert!(peer.closed().await, "case {i}");
        assert_eq!(broker.stat("proxy_headers_invalid"), i as u64 + 1);
    }
    // Half a header, then the peer goes away.
    let cut = connect_with(broker.addr(STARTTLS), &header("203.0.113.7:2", false)[..10]).await;
    drop(cut);
    eventually("cut header counted", || {
        broker.stat("proxy_headers_invalid") == 5
    })
    .await;
    // Nothing at all: closed at the deadline.
    let started = std::time::Instant::now();
    let mut silent = RawPeer::new(
        Box::new(connect_resetting(broker.addr(STARTTLS)).await),
        crbroker::xml::ns::CLIENT,
    );
    assert!(silent.closed().await);
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_eq!(broker.stat("proxy_headers_invalid"), 6);
    eventually("no connection left open", || {
        broker.stat("connections_open") == 0
    })
    .await;

    let tcp = connect_with(broker.addr(STARTTLS), &header("203.0.113.7:3", true)).await;
    let _ok = login_starttls(tcp, "cpe-0001").await;
    assert_eq!(session_peer(&broker, "cpe-0001").await, "203.0.113.7:3");
}

/// HAProxy from the distribution in front of the broker.
struct Haproxy {
    child: Child,
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start HAProxy (mode tcp) with one frontend per (frontend port, backend, `send-proxy` option).
fn start_haproxy(routes: &[(u16, SocketAddr, &str)]) -> Haproxy {
    let mut config = String::from(
        "global\n  maxconn 256\n\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n",
    );
    for (i, (port, backend, send_proxy)) in routes.iter().enumerate() {
        config.push_str(&format!(
            "\nfrontend fe{i}\n  bind 127.0.0.1:{port}\n  default_backend be{i}\n\nbackend be{i}\n  server broker {backend} {send_proxy}\n"
        ));
    }
    let path = pki().dir.join(format!("haproxy-{}.cfg", routes[0].0));
    std::fs::write(&path, config).unwrap();
    let child = Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run haproxy ({e}): install it (Debian: apt-get install -y haproxy)")
        });
    Haproxy { child }
}

/// A connection through HAProxy from 127.0.0.2 (HAProxy itself reaches the broker from
/// 127.0.0.1, the only address in `proxy_from`).
async fn connect_from_127_0_0_2(frontend: SocketAddr) -> TcpStream {
    let deadline = tokio::time::Instant::now() + IO_TIMEOUT;
    loop {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        match socket.connect(frontend).await {
            Ok(tcp) => return tcp,
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "HAProxy does not listen on {frontend}: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// HAProxy with `send-proxy` (v1) and `send-proxy-v2`: the broker sees the client's address,
/// not HAProxy's.
#[tokio::test]
async fn haproxy_in_front_passes_the_client_address() {
    let broker = start(TestOptions::default(), "127.0.0.1/32").await;
    let ports = binary::free_ports(2);
    let _haproxy = start_haproxy(&[
        (ports[0], broker.addr(STARTTLS), "send-proxy"),
        (ports[1], broker.addr(DIRECT_TLS), "send-proxy-v2"),
    ]);
    let v1_frontend: SocketAddr = format!("127.0.0.1:{}", ports[0]).parse().unwrap();
    let v2_frontend: SocketAddr = format!("127.0.0.1:{}", ports[1]).parse().unwrap();

    let tcp = connect_from_127_0_0_2(v1_frontend).await;
    let client = tcp.local_addr().unwrap().to_string();
    let _v1 = login_starttls(tcp, "cpe-0001").await;
    assert_eq!(session_peer(&broker, "cpe-0001").await, client);

    let tcp = connect_from_127_0_0_2(v2_frontend).await;
    let client = tcp.local_addr().unwrap().to_string();
    let _v2 = login_direct_tls(tcp, "cpe-0002").await;
    assert_eq!(session_peer(&broker, "cpe-0002").await, client);
    assert_eq!(broker.stat("proxy_headers_invalid"), 0);
}
