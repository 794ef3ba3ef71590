//! Failed logins slow guessing down but never keep the device out (src/throttle.rs): wrong
//! passwords sent as fast as the broker allows, over real TLS, while the device logs in.

mod common;

use common::*;
use crbroker::xml::ns;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TARGET: &str = "cpe-0007";
/// Another loopback address: the attacker's source in the "different address" case.
const ATTACKER_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
const DEVICE_IP: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// A raw peer whose connection comes from `source` (any 127.x address reaches the broker on
/// loopback): a second client address, for per-address behaviour.
async fn tcp_from(source: IpAddr, addr: std::net::SocketAddr) -> RawPeer {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(std::net::SocketAddr::new(source, 0)).unwrap();
    let tcp = socket.connect(addr).await.unwrap();
    #[allow(deprecated)]
    tcp.set_linger(Some(Duration::ZERO)).unwrap();
    RawPeer::new(Box::new(tcp), ns::CLIENT)
}

/// One `<auth>` with PLAIN on an open stream; the SASL answer's condition (`""` for success),
/// or None when the connection closed.
async fn plain_attempt(peer: &mut RawPeer, user: &str, password: &str) -> Option<String> {
    let payload = base64_encode(format!("\0{user}\0{password}").as_bytes());
    peer.try_send(
        format!(
            "<auth xmlns='{}' mechanism='PLAIN'>{payload}</auth>",
            ns::SASL
        )
        .as_bytes(),
    )
    .await
    .ok()?;
    match peer.next_frame().await? {
        crbroker::xml::Frame::Stanza(e) if e.is("success", ns::SASL) => Some(String::new()),
        crbroker::xml::Frame::Stanza(e) if e.is("failure", ns::SASL) => {
            Some(e.first_child().map(|c| c.name.clone()).unwrap_or_default())
        }
        _ => None,
    }
}

/// A TLS stream from `source` with the SASL features read, ready for `<auth>`.
async fn sasl_ready(source: IpAddr, broker: &TestBroker) -> RawPeer {
    let mut peer = tcp_from(source, broker.addr(STARTTLS))
        .await
        .starttls()
        .await;
    peer.send(CLIENT_HEADER).await;
    peer.header().await;
    let features = peer.element().await;
    assert!(features.child("mechanisms", ns::SASL).is_some());
    peer
}

/// Guess `TARGET`'s password from `source` until `stop`: every connection tries until the broker
/// closes it (`auth_attempts_per_connection`), then the next connection starts at once.
fn spawn_guesser(
    broker: &TestBroker,
    source: IpAddr,
    stop: Arc<AtomicBool>,
    refused: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<()> {
    let addr = broker.addr(STARTTLS);
    tokio::spawn(async move {
        let mut round = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let mut peer = tcp_from(source, addr).await.starttls().await;
            peer.send(CLIENT_HEADER).await;
            peer.header().await;
            peer.element().await;
            while !stop.load(Ordering::Relaxed) {
                round += 1;
                match plain_attempt(&mut peer, TARGET, &format!("guess-{round}")).await {
                    Some(condition) => {
                        assert_eq!(condition, "not-authorized");
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                    None => break,
                }
            }
        }
    })
}

/// Guessers hammer the target until `warm` wrong passwords were refused; then the device logs in
/// with its password from 127.0.0.1 while they go on. Returns how long that login took.
async fn device_login_under_attack(
    broker: &TestBroker,
    attacker_ip: IpAddr,
    warm: u64,
) -> Duration {
    let stop = Arc::new(AtomicBool::new(false));
    let refused = Arc::new(AtomicU64::new(0));
    let guessers: Vec<_> = (0..4)
        .map(|_| spawn_guesser(broker, attacker_ip, stop.clone(), refused.clone()))
        .collect();
    let warming = Instant::now();
    while refused.load(Ordering::Relaxed) < warm {
        assert!(
            warming.elapsed() < Duration::from_secs(90),
            "guessers stuck"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let started = Instant::now();
    let (mut cpe, jid) = RawPeer::login(
        broker.addr(STARTTLS),
        TARGET,
        &cpe_password(TARGET),
        Some("cwmp"),
    )
    .await;
    let took = started.elapsed();
    // Online: a connection request reaches it.
    let mut acs = broker.raw_acs().await;
    acs.send(&connection_request(
        "cr-1",
        &jid,
        Some(COMPONENT_DOMAIN),
        "u",
        "p",
    ))
    .await;
    let request = cpe.element().await;
    answer_result(&mut cpe, request.attr("id").unwrap()).await;
    let answer = acs.element().await;
    assert_eq!(answer.attr("type"), Some("result"));
    stop.store(true, Ordering::Relaxed);
    for g in guessers {
        g.abort();
    }
    eprintln!(
        "device login under attack from {attacker_ip}: {took:?} ({} wrong passwords refused in all, {} attempts delayed)",
        refused.load(Ordering::Relaxed),
        broker.stat("logins_delayed"),
    );
    took
}

#[tokio::test]
async fn guessing_from_another_address_delays_the_device_at_most_the_account_cap() {
    let broker = TestBroker::start().await;
    // 3 free failures, then 250 ms doubling to the 2 s cap: 8 failures put the account at it.
    let took = device_login_under_attack(&broker, ATTACKER_IP, 8).await;
    // Account cap 2 s plus a login; generous for a loaded machine.
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert!(broker.stat("logins_delayed") >= 1);
    assert!(broker.stat("login_delay_ms_total") >= 250);
}

#[tokio::test]
async fn guessing_from_the_devices_own_address_delays_it_at_most_the_address_cap() {
    // Carrier NAT: attacker and device share one address; the address cap (8 s) applies.
    let broker = TestBroker::start().await;
    // 20 free failures per address, then doubling from 250 ms: 25 reach the 8 s cap.
    let took = device_login_under_attack(&broker, DEVICE_IP, 26).await;
    assert!(broker.stat("login_delay_ms_total") >= 8000);
    assert!(took < Duration::from_secs(16), "{took:?}");
}

#[tokio::test]
async fn attempts_over_the_free_count_wait_the_base_delay_before_the_check() {
    let broker = TestBroker::start().await;
    let mut peer = sasl_ready(ATTACKER_IP, &broker).await;
    // Three free failures (default login_delay_account_free), which also end this connection
    // (default auth_attempts_per_connection).
    for _ in 0..3 {
        assert_eq!(
            plain_attempt(&mut peer, TARGET, "wrong").await.as_deref(),
            Some("not-authorized")
        );
    }
    peer.expect_stream_error("policy-violation").await;
    assert_eq!(broker.stat("logins_delayed"), 0);
    let mut peer = sasl_ready(ATTACKER_IP, &broker).await;
    let started = Instant::now();
    assert_eq!(
        plain_attempt(&mut peer, TARGET, "still-wrong")
            .await
            .as_deref(),
        Some("not-authorized")
    );
    let took = started.elapsed();
    eprintln!("4th wrong password answered after {took:?}");
    // A timer's lower bound: the answer cannot come before the 250 ms base delay.
    assert!(took >= Duration::from_millis(250), "{took:?}");
    assert_eq!(broker.stat("logins_delayed"), 1);
    // Other accounts from the same address are not delayed (address free count is 20).
    let mut other = sasl_ready(ATTACKER_IP, &broker).await;
    assert_eq!(
        plain_attempt(&mut other, "cpe-0008", &cpe_password("cpe-0008"))
            .await
            .as_deref(),
        Some("")
    );
    assert_eq!(broker.stat("logins_delayed"), 1);
}

#[tokio::test]
async fn over_long_usernames_are_refused_before_any_lookup() {
    let broker = TestBroker::start().await;
    let long = "x".repeat(crbroker::auth::MAX_USERNAME_LEN + 1);
    let mut first = sasl_ready(DEVICE_IP, &broker).await;
    let peer = &mut first;
    assert_eq!(
        plain_attempt(peer, &long, "pw").await.as_deref(),
        Some("not-authorized")
    );
    for mechanism in ["SCRAM-SHA-1", "SCRAM-SHA-256"] {
        let first = base64_encode(format!("n,,n={long},r=abcdef").as_bytes());
        peer.send(&format!(
            "<auth xmlns='{}' mechanism='{mechanism}'>{first}</auth>",
            ns::SASL
        ))
        .await;
        let answer = peer.element().await;
        assert!(answer.is("failure", ns::SASL), "{}", peer.transcript);
        assert_eq!(
            answer.first_child().map(|c| c.name.as_str()),
            Some("not-authorized")
        );
    }
    // Third failure: the connection is closed; continue on a new one.
    peer.expect_stream_error("policy-violation").await;
    let mut peer = sasl_ready(DEVICE_IP, &broker).await;
    assert_eq!(broker.stat("logins_username_too_long"), 3);
    assert_eq!(broker.stat("logins_delayed"), 0);
    // The longest allowed name is an ordinary unknown user.
    let longest = "x".repeat(crbroker::auth::MAX_USERNAME_LEN);
    assert_eq!(
        plain_attempt(&mut peer, &longest, "pw").await.as_deref(),
        Some("not-authorized")
    );
    assert_eq!(broker.stat("logins_username_too_long"), 3);
    let _ = broker.cpe("cpe-0001").await;
}

#[tokio::test]
async fn failures_are_answered_no_earlier_than_the_floor() {
    // Default limits.sasl_failure_floor_ms = 200: a timer's lower bound, never an upper one.
    let broker = TestBroker::start().await;
    let mut peer = sasl_ready(DEVICE_IP, &broker).await;
    for (user, password) in [("cpe-0003", "wrong"), ("nobody-here", "pw")] {
        let started = Instant::now();
        assert_eq!(
            plain_attempt(&mut peer, user, password).await.as_deref(),
            Some("not-authorized")
        );
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(200), "{user}: {took:?}");
    }
    // An unknown mechanism costs no credential check: no floor needed, but still an answer.
    peer.send(&format!("<auth xmlns='{}' mechanism='X-NONE'/>", ns::SASL))
        .await;
    let answer = peer.element().await;
    assert_eq!(
        answer.first_child().map(|c| c.name.as_str()),
        Some("invalid-mechanism")
    );
}
