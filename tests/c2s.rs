//! CPE side: TLS, SASL, binding, server-handled stanzas, `from` stamping, conflicts.

mod common;

use common::peers::{self, Transport};
use common::*;
use crbroker::xml::ns;

#[tokio::test]
async fn starttls_plain_login_with_tokio_xmpp_client() {
    let broker = TestBroker::start().await;
    let (_client, jid) = peers::client(
        broker.addr(STARTTLS),
        "cpe-0001@example.net/cwmp",
        &cpe_password("cpe-0001"),
        Transport::StartTls,
    )
    .await;
    assert_eq!(jid.to_string(), "cpe-0001@example.net/cwmp");
    // tokio-xmpp offers only SCRAM-*-PLUS over TLS 1.3; we never advertise -PLUS, so it used PLAIN.
    assert_eq!(broker.stat("auth_plain"), 1);
    assert_eq!(
        broker.stat("auth_scram_sha1") + broker.stat("auth_scram_sha256"),
        0
    );
}

#[tokio::test]
async fn scram_sha1_login_with_tokio_xmpp_client() {
    let broker = TestBroker::start().await;
    let (_client, jid) = peers::client(
        broker.addr(SCRAM_SHA1_TLS12),
        "cpe-0002@example.net/cwmp",
        &cpe_password("cpe-0002"),
        Transport::StartTls,
    )
    .await;
    assert_eq!(jid.to_string(), "cpe-0002@example.net/cwmp");
    assert_eq!(
        broker.stat("auth_scram_sha1"),
        1,
        "the login really used SCRAM-SHA-1"
    );
    assert_eq!(broker.stat("auth_plain"), 0);
}

#[tokio::test]
async fn scram_sha256_login_with_tokio_xmpp_client() {
    let broker = TestBroker::start().await;
    let (_client, _) = peers::client(
        broker.addr(SCRAM_SHA256_TLS12),
        "cpe-0003@example.net/cwmp",
        &cpe_password("cpe-0003"),
        Transport::StartTls,
    )
    .await;
    assert_eq!(
        broker.stat("auth_scram_sha256"),
        1,
        "the login really used SCRAM-SHA-256"
    );
    assert_eq!(broker.stat("auth_plain"), 0);
}

#[tokio::test]
async fn scram_wrong_password_is_refused() {
    let broker = TestBroker::start().await;
    peers::client_login_refused(
        broker.addr(SCRAM_SHA256_TLS12),
        "cpe-0003@example.net/cwmp",
        "wrong",
        || broker.stat("logins_failed") >= 1,
    )
    .await;
    assert_eq!(broker.stat("logins_ok"), 0);
    assert_eq!(broker.stat("auth_scram_sha256"), 0);
}

#[tokio::test]
async fn direct_tls_login_with_tokio_xmpp_client() {
    let broker = TestBroker::start().await;
    let (_client, jid) = peers::client(
        broker.addr(DIRECT_TLS),
        "cpe-0004@example.net/cwmp",
        &cpe_password("cpe-0004"),
        Transport::DirectTls,
    )
    .await;
    assert_eq!(jid.to_string(), "cpe-0004@example.net/cwmp");
    assert_eq!(broker.stat("logins_ok"), 1);
}

#[tokio::test]
async fn only_starttls_is_offered_before_tls_and_plain_is_refused() {
    let broker = TestBroker::start().await;
    let mut peer = RawPeer::tcp(broker.addr(STARTTLS)).await;
    peer.send(CLIENT_HEADER).await;
    peer.header().await;
    let features = peer.element().await;
    let offered: Vec<_> = features
        .child_elements()
        .map(|e| (e.name.clone(), e.ns.clone()))
        .collect();
    assert_eq!(offered, vec![("starttls".to_string(), ns::TLS.to_string())]);
    assert!(features
        .child("starttls", ns::TLS)
        .unwrap()
        .child("required", ns::TLS)
        .is_some());
    let payload = base64_encode(b"\0cpe-0001\0pw-cpe-0001");
    peer.send(&format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{payload}</auth>"
    ))
    .await;
    let failure = peer.element().await;
    assert!(failure.is("failure", ns::SASL));
    assert_eq!(failure.first_child().unwrap().name, "encryption-required");
    assert_eq!(broker.stat("logins_ok"), 0);
}

#[tokio::test]
async fn wrong_password_and_unknown_user_get_not_authorized() {
    let broker = TestBroker::start().await;
    for (user, password) in [("cpe-0001", "wrong"), ("nobody", "whatever")] {
        let mut peer = RawPeer::tcp(broker.addr(STARTTLS)).await.starttls().await;
        let result = peer.auth_plain(user, password).await;
        assert_eq!(result, Err("not-authorized".to_string()), "{user}");
    }
    assert_eq!(broker.stat("logins_ok"), 0);
    assert_eq!(broker.stat("logins_failed"), 2);
}

#[tokio::test]
async fn mechanisms_offered_after_tls_follow_the_listener_config() {
    let broker = TestBroker::start().await;
    let mut peer = RawPeer::tcp(broker.addr(STARTTLS)).await.starttls().await;
    peer.send(CLIENT_HEADER).await;
    peer.header().await;
    let features = peer.element().await;
    let mechanisms: Vec<String> = features
        .child("mechanisms", ns::SASL)
        .unwrap()
        .child_elements()
        .map(|m| m.text())
        .collect();
    assert_eq!(mechanisms, ["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"]);
    assert!(!mechanisms.iter().any(|m| m.ends_with("-PLUS")));
}

#[tokio::test]
async fn resource_is_kept_or_derived_from_the_username() {
    let broker = TestBroker::start().await;
    let (_a, jid) = broker.cpe("cpe-0005").await;
    assert_eq!(jid, "cpe-0005@example.net/cwmp");
    let (_b, jid) = RawPeer::login(broker.addr(STARTTLS), "cpe-0006", "pw-cpe-0006", None).await;
    assert_eq!(jid, "cpe-0006@example.net/cpe-0006");
    let (_c, again) = RawPeer::login(broker.addr(STARTTLS), "cpe-0007", "pw-cpe-0007", None).await;
    drop(_c);
    let (_d, again2) = RawPeer::login(broker.addr(STARTTLS), "cpe-0007", "pw-cpe-0007", None).await;
    assert_eq!(
        again, again2,
        "the derived resource is stable across logins"
    );
}

#[tokio::test]
async fn session_presence_roster_ping_and_whitespace_keep_the_session() {
    let broker = TestBroker::start().await;
    let (mut cpe, jid) = broker.cpe("cpe-0008").await;
    cpe.send("<iq type='set' id='s1'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>")
        .await;
    let reply = cpe.element().await;
    assert_eq!(
        (reply.attr("type"), reply.attr("id")),
        (Some("result"), Some("s1"))
    );
    cpe.send("<presence/>  \n ").await;
    cpe.send("<iq type='get' id='r1'><query xmlns='jabber:iq:roster'/></iq>")
        .await;
    let roster = cpe.element().await;
    assert_eq!(
        (roster.attr("type"), roster.attr("id")),
        (Some("result"), Some("r1"))
    );
    assert!(roster
        .child("query", ns::ROSTER)
        .unwrap()
        .children
        .is_empty());
    cpe.send(" ").await;
    cpe.send("<iq type='get' id='p1' to='example.net'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    let pong = cpe.element().await;
    assert_eq!(
        (pong.attr("type"), pong.attr("id"), pong.attr("to")),
        (Some("result"), Some("p1"), Some(jid.as_str()))
    );
    // An unknown payload to the server: a stanza error, and the session goes on.
    cpe.send("<iq type='get' id='u1'><query xmlns='urn:example:unknown'/></iq>")
        .await;
    let unknown = cpe.element().await;
    assert_eq!(unknown.attr("type"), Some("error"));
    assert_eq!(
        error_condition(&unknown).as_deref(),
        Some("service-unavailable")
    );
    cpe.send("<iq type='get' id='p2'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    assert_eq!(cpe.element().await.attr("id"), Some("p2"));
}

#[tokio::test]
async fn forged_from_ends_the_stream_with_invalid_from_and_is_not_delivered() {
    let broker = TestBroker::start().await;
    let (mut acs, _) =
        RawPeer::login(broker.addr(STARTTLS), ACS_USER, ACS_PASSWORD, Some("acs")).await;
    let (mut cpe, _) = broker.cpe("cpe-0009").await;
    cpe.send("<message to='acs@example.net/acs' from='cpe-0010@example.net/cwmp'><body>forged</body></message>").await;
    cpe.expect_stream_error("invalid-from").await;
    // The ACS got nothing: its next element is the answer to its own ping.
    acs.send("<iq type='get' id='after'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    assert_eq!(acs.element().await.attr("id"), Some("after"));
}

#[tokio::test]
async fn second_login_with_the_same_full_jid_gets_the_routing_and_the_old_stream_conflict() {
    let broker = TestBroker::start().await;
    let (mut old, jid) = broker.cpe("cpe-0011").await;
    let (client, new_jid) = peers::client(
        broker.addr(STARTTLS),
        "cpe-0011@example.net/cwmp",
        "pw-cpe-0011",
        Transport::StartTls,
    )
    .await;
    assert_eq!(jid, new_jid.to_string());
    old.expect_stream_error("conflict").await;
    let cpe = peers::spawn_emulated_cpe(client, "u", "p");
    let mut acs = peers::component::connect(broker.component, COMPONENT_DOMAIN, COMPONENT_SECRET)
        .await
        .unwrap();
    peers::component::send_request(&mut acs, "after-conflict", &jid, "u", "p").await;
    let answer = peers::component::next_iq(&mut acs).await;
    assert!(
        matches!(answer, tokio_xmpp_component::parsers::iq::Iq::Result { ref id, .. } if id == "after-conflict"),
        "{answer:?}"
    );
    assert_eq!(broker.stat("sessions_replaced"), 1);
    cpe.abort();
}

#[tokio::test]
async fn hashed_accounts_from_an_accounts_file_log_in_with_plain_and_scram() {
    let dir = pki().dir.join(format!("hashed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let accounts = dir.join("accounts.txt");
    std::fs::write(
        &accounts,
        format!(
            "# hashed: no plaintext here\n{}\n",
            crbroker::auth::hash_line("hashed-cpe", "hashed-secret", 4096)
        ),
    )
    .unwrap();
    let text = config_text(&TestOptions::default()).replacen(
        "[accounts]\n",
        &format!("[accounts]\nfile = \"{}\"\n", accounts.display()),
        1,
    );
    let config = crbroker::config::Config::parse(&text, "hashed.toml", dir.clone()).unwrap();
    let broker = crbroker::Broker::start(config).await.unwrap();
    let plain_addr = broker.c2s_addrs[STARTTLS].1;
    let scram_addr = broker.c2s_addrs[SCRAM_SHA256_TLS12].1;
    let (_raw, jid) = RawPeer::login(plain_addr, "hashed-cpe", "hashed-secret", Some("cwmp")).await;
    assert_eq!(jid, "hashed-cpe@example.net/cwmp");
    let (_client, _) = peers::client(
        scram_addr,
        "hashed-cpe@example.net/scram",
        "hashed-secret",
        Transport::StartTls,
    )
    .await;
    let stats = &broker.stats;
    assert_eq!(
        stats.auth_plain.load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_eq!(
        stats
            .auth_scram_sha256
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    let mut wrong = RawPeer::tcp(plain_addr).await.starttls().await;
    assert_eq!(
        wrong.auth_plain("hashed-cpe", "nope").await,
        Err("not-authorized".to_string())
    );
}

/// SASL PLAIN whose `</auth>` is followed by `trailer` in the same write; with `header_too` the
/// new stream header (with its XML declaration) follows in that write as well, before the
/// broker's `<success/>` arrived. Login and bind must succeed.
async fn login_with_whitespace_after_auth(mut peer: RawPeer, trailer: &str, header_too: bool) {
    let user = cpe_user(7);
    peer.send(CLIENT_HEADER).await;
    peer.header().await;
    peer.element().await; // features
    let payload = base64_encode(format!("\0{user}\0{}", cpe_password(&user)).as_bytes());
    let auth = format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{payload}</auth>"
    );
    let new_header = if header_too { CLIENT_HEADER } else { "" };
    peer.send(&format!("{auth}{trailer}{new_header}")).await;
    let success = peer.element().await;
    assert!(success.is("success", ns::SASL), "{}", peer.transcript);
    let jid = if header_too {
        peer.bind_after_header(Some("ws")).await
    } else {
        peer.bind(Some("ws")).await
    };
    assert_eq!(jid, format!("{user}@{DOMAIN}/ws"));
    assert!(CLIENT_HEADER.starts_with("<?xml version='1.0'?>"));
}

#[tokio::test]
async fn whitespace_after_auth_is_dropped_at_the_restart_on_the_starttls_listener() {
    let broker = TestBroker::start().await;
    let addr = broker.addr(STARTTLS);
    let peer = RawPeer::tcp(addr).await.starttls().await;
    login_with_whitespace_after_auth(peer, "\n", false).await;
    let peer = RawPeer::tcp(addr).await.starttls().await;
    login_with_whitespace_after_auth(peer, "\r\n\t ", true).await;
    assert_eq!(broker.stat("logins_ok"), 2);
}

#[tokio::test]
async fn whitespace_after_auth_is_dropped_at_the_restart_on_the_direct_tls_listener() {
    let broker = TestBroker::start().await;
    let addr = broker.addr(DIRECT_TLS);
    login_with_whitespace_after_auth(RawPeer::direct_tls(addr).await, "\n", false).await;
    login_with_whitespace_after_auth(RawPeer::direct_tls(addr).await, "\r\n\t ", true).await;
    assert_eq!(broker.stat("logins_ok"), 2);
}
