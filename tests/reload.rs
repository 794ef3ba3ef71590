//! Reload without dropping anyone (src/reload.rs): certificate rotation under live sessions,
//! accounts added, removed and changed, component secrets, invalid files, and SIGHUP on the
//! real binary. Each test gets its own configuration file, certificate copy and accounts file.

mod common;

use common::binary::{start_binary, wait_listening};
use common::*;
use crbroker::reload::{ReloadChanges, ReloadError};
use crbroker::xml::ns;
use futures::StreamExt;
use std::path::PathBuf;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Files of one test: its configuration (the test config, with the certificate and an accounts
/// file of its own).
struct Files {
    config: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    accounts: PathBuf,
}

fn files(name: &str, accounts: &str) -> Files {
    let dir = pki().dir.join(format!("reload-{name}"));
    std::fs::create_dir_all(&dir).unwrap();
    let files = Files {
        config: dir.join("crbroker.toml"),
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
        accounts: dir.join("accounts.txt"),
    };
    std::fs::copy(&pki().cert_path, &files.cert).unwrap();
    std::fs::copy(&pki().key_path, &files.key).unwrap();
    std::fs::write(&files.accounts, accounts).unwrap();
    std::fs::write(&files.config, config_for(&files)).unwrap();
    files
}

fn config_for(files: &Files) -> String {
    config_text(&TestOptions::default())
        .replace(
            &pki().cert_path.display().to_string(),
            &files.cert.display().to_string(),
        )
        .replace(
            &pki().key_path.display().to_string(),
            &files.key.display().to_string(),
        )
        .replacen(
            "[accounts]\n",
            &format!("[accounts]\nfile = \"{}\"\n", files.accounts.display()),
            1,
        )
}

async fn reload(broker: &TestBroker) -> Result<ReloadChanges, ReloadError> {
    broker.broker.as_ref().unwrap().reload().await.outcome
}

/// A ping to the server, answered: the session is alive both ways.
async fn ping(peer: &mut RawPeer, id: &str) {
    peer.send(&format!(
        "<iq type='get' id='{id}'><ping xmlns='urn:xmpp:ping'/></iq>"
    ))
    .await;
    let pong = peer.element().await;
    assert_eq!(
        (pong.attr("id"), pong.attr("type")),
        (Some(id), Some("result")),
        "{}",
        peer.transcript
    );
}

/// Direct TLS to `addr`: the peer and the leaf certificate the broker presented.
async fn direct_tls(addr: std::net::SocketAddr) -> (RawPeer, Vec<u8>) {
    let tcp = connect_resetting(addr).await;
    let name = rustls::pki_types::ServerName::try_from(DOMAIN).unwrap();
    let tls = tls_connector().connect(name, tcp).await.unwrap();
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    (RawPeer::new(Box::new(tls), ns::CLIENT), leaf)
}

/// Read from `tcp` until what was received contains `end`.
async fn read_until(tcp: &mut tokio::net::TcpStream, end: &str, seen: &mut String) {
    while !seen.contains(end) {
        let mut chunk = [0u8; 1024];
        let n = tokio::time::timeout(IO_TIMEOUT, tcp.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed; so far: {seen}");
        seen.push_str(&String::from_utf8_lossy(&chunk[..n]));
    }
}

/// STARTTLS on `addr` up to the handshake: the leaf certificate the broker presented.
async fn starttls_leaf(addr: std::net::SocketAddr) -> Vec<u8> {
    let mut tcp = connect_resetting(addr).await;
    tcp.write_all(CLIENT_HEADER.as_bytes()).await.unwrap();
    let mut seen = String::new();
    read_until(&mut tcp, "</stream:features>", &mut seen).await;
    tcp.write_all(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        .await
        .unwrap();
    read_until(
        &mut tcp,
        "<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>",
        &mut seen,
    )
    .await;
    let name = rustls::pki_types::ServerName::try_from(DOMAIN).unwrap();
    let tls = tls_connector().connect(name, tcp).await.unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// A login attempt with PLAIN on the STARTTLS listener: the SASL outcome.
async fn try_login(addr: std::net::SocketAddr, user: &str, password: &str) -> Result<(), String> {
    let mut peer = RawPeer::tcp(addr).await.starttls().await;
    peer.auth_plain(user, password).await.map(|_| ())
}

/// A connection request from the raw ACS to `jid`, answered by the CPE, and the result back.
async fn relay_one(acs: &mut RawPeer, cpe: &mut RawPeer, jid: &str, id: &str) {
    let answer = request_answered(acs, cpe, id, jid).await;
    assert_eq!(
        (answer.attr("id"), answer.attr("type")),
        (Some(id), Some("result")),
        "{}",
        acs.transcript
    );
}

const SESSIONS: usize = 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_rotates_under_1000_live_sessions() {
    let f = files("rotate", "");
    let broker = TestBroker::start_file(&f.config).await;
    let (starttls, direct) = (broker.addr(STARTTLS), broker.addr(DIRECT_TLS));
    let (_, before) = direct_tls(direct).await;

    // 1,000 CPE sessions, half on each kind of listener (64 accounts, many resources each).
    let mut sessions: Vec<(RawPeer, String)> = futures::stream::iter(0..SESSIONS)
        .map(|i| async move {
            let user = cpe_user(i % CPE_ACCOUNTS);
            let resource = format!("r{i}");
            if i % 2 == 0 {
                RawPeer::login(starttls, &user, &cpe_password(&user), Some(&resource)).await
            } else {
                let (mut peer, _) = direct_tls(direct).await;
                peer.auth_plain(&user, &cpe_password(&user)).await.unwrap();
                let jid = peer.bind(Some(&resource)).await;
                (peer, jid)
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    assert_eq!(broker.stat("sessions_online"), SESSIONS as u64);

    let new_leaf = pki().issue_server_certificate(&f.cert, &f.key);
    assert_ne!(before, new_leaf);
    let changes = reload(&broker).await.expect("reload applies");
    assert!(changes.certificate, "{changes}");
    assert_eq!(changes.accounts, Default::default(), "{changes}");
    assert_eq!(changes.sessions_closed, 0);

    // New handshakes, on both kinds of listener, get the new certificate.
    let (mut fresh, after) = direct_tls(direct).await;
    assert_eq!(after, new_leaf);
    assert_eq!(starttls_leaf(starttls).await, new_leaf);
    fresh.auth_plain("cpe-0000", "pw-cpe-0000").await.unwrap();
    let fresh_jid = fresh.bind(Some("fresh")).await;

    // None of the 1,000 was dropped: each answers a ping, and some relay a request.
    futures::stream::iter(sessions.iter_mut().enumerate())
        .for_each_concurrent(64, |(i, (peer, _))| async move {
            ping(peer, &format!("after-{i}")).await;
        })
        .await;
    assert_eq!(broker.stat("sessions_online"), SESSIONS as u64 + 1);
    let mut acs = broker.raw_acs().await;
    for (i, (peer, jid)) in sessions.iter_mut().enumerate().step_by(97) {
        relay_one(&mut acs, peer, jid, &format!("cr-{i}")).await;
    }
    relay_one(&mut acs, &mut fresh, &fresh_jid, "cr-fresh").await;
    broker.shutdown().await;
}

#[tokio::test]
async fn removing_an_account_closes_its_session_and_answers_its_request_once() {
    let f = files("remove", "gone plain:gone-pw\nstay plain:stay-pw\n");
    let broker = TestBroker::start_file(&f.config).await;
    let addr = broker.addr(STARTTLS);
    let (mut gone, gone_jid) = RawPeer::login(addr, "gone", "gone-pw", Some("cwmp")).await;
    let (mut stay, stay_jid) = RawPeer::login(addr, "stay", "stay-pw", Some("cwmp")).await;
    let mut acs = broker.raw_acs().await;
    acs.send(&connection_request(
        "cr-gone",
        &gone_jid,
        Some(COMPONENT_DOMAIN),
        "u",
        "p",
    ))
    .await;
    let request = gone.element().await;
    assert!(request.child("connectionRequest", ns::CONN_REQ).is_some());

    std::fs::write(&f.accounts, "stay plain:stay-pw\n").unwrap();
    let changes = reload(&broker).await.expect("reload applies");
    assert_eq!(
        (
            changes.accounts.added,
            changes.accounts.removed,
            changes.accounts.changed
        ),
        (0, 1, 0),
        "{changes}"
    );
    assert_eq!((changes.sessions_closed, changes.accounts_total), (1, 66));

    // The removed account's session ends with <not-authorized/>; its request gets one answer.
    gone.expect_stream_error("not-authorized").await;
    let answer = acs.element().await;
    assert_eq!(answer.attr("id"), Some("cr-gone"));
    assert_eq!(
        error_condition(&answer).as_deref(),
        Some("service-unavailable")
    );
    // Exactly one: the next thing the ACS gets is the answer to its next request.
    relay_one(&mut acs, &mut stay, &stay_jid, "cr-stay").await;
    assert_eq!(broker.stat("requests_cpe_gone"), 1);
    assert_eq!(
        try_login(addr, "gone", "gone-pw").await,
        Err("not-authorized".into())
    );
    ping(&mut stay, "still-here").await;
    broker.shutdown().await;
}

#[tokio::test]
async fn added_account_logs_in_and_a_changed_password_keeps_the_live_session() {
    let f = files("change", "alice plain:old-pw\n");
    let broker = TestBroker::start_file(&f.config).await;
    let addr = broker.addr(STARTTLS);
    let (mut alice, _) = RawPeer::login(addr, "alice", "old-pw", Some("cwmp")).await;
    assert_eq!(
        try_login(addr, "bob", "bob-pw").await,
        Err("not-authorized".into())
    );

    std::fs::write(&f.accounts, "alice plain:new-pw\nbob plain:bob-pw\n").unwrap();
    let changes = reload(&broker).await.expect("reload applies");
    assert_eq!(
        (
            changes.accounts.added,
            changes.accounts.removed,
            changes.accounts.changed
        ),
        (1, 0, 1),
        "{changes}"
    );
    assert_eq!(changes.sessions_closed, 0);
    assert!(!changes.certificate);

    ping(&mut alice, "alive").await;
    assert_eq!(try_login(addr, "bob", "bob-pw").await, Ok(()));
    assert_eq!(try_login(addr, "alice", "new-pw").await, Ok(()));
    assert_eq!(
        try_login(addr, "alice", "old-pw").await,
        Err("not-authorized".into())
    );
    ping(&mut alice, "still-alive").await;

    // Reading the same files again changes nothing.
    let again = reload(&broker).await.expect("reload applies");
    assert!(again.is_empty(), "{again}");
    broker.shutdown().await;
}

#[tokio::test]
async fn component_secret_changes_for_new_handshakes_only() {
    let f = files("component", "");
    let broker = TestBroker::start_file(&f.config).await;
    let mut live = broker.raw_acs().await;
    let text = std::fs::read_to_string(&f.config).unwrap().replace(
        &format!("secret = \"{COMPONENT_SECRET}\""),
        "secret = \"rotated-secret\"",
    );
    std::fs::write(&f.config, text).unwrap();
    let changes = reload(&broker).await.expect("reload applies");
    assert_eq!(changes.component_secrets, 1, "{changes}");

    let mut old = RawPeer::component(broker.component, COMPONENT_DOMAIN, COMPONENT_SECRET).await;
    old.expect_stream_error("not-authorized").await;
    let mut new = RawPeer::component(broker.component, COMPONENT_DOMAIN, "rotated-secret").await;
    new.expect_handshake_ok().await;
    // The component attached before the reload still works: it relays a request.
    let (mut cpe, jid) = broker.cpe("cpe-0001").await;
    relay_one(&mut live, &mut cpe, &jid, "cr-live").await;
    broker.shutdown().await;
}

/// The line of `needle` in `text`, 1-based.
fn line_of(text: &str, needle: &str) -> usize {
    text[..text.find(needle).expect("needle")].lines().count() + 1
}

#[tokio::test]
async fn an_invalid_file_keeps_the_old_configuration_whole() {
    let f = files("invalid", "alice plain:alice-pw\n");
    let broker = TestBroker::start_file(&f.config).await;
    let addr = broker.addr(STARTTLS);
    let (mut alice, _) = RawPeer::login(addr, "alice", "alice-pw", Some("cwmp")).await;
    let good = config_for(&f);

    // Bad TOML in the config, together with a new account and a new certificate: none of it
    // is applied, and the error names the file, line and key.
    let bad = good.replace("[limits]\n", "[limits]\nfrobnicate = 1\n");
    std::fs::write(&f.config, &bad).unwrap();
    std::fs::write(&f.accounts, "alice plain:alice-pw\ncarol plain:carol-pw\n").unwrap();
    let first_leaf = std::fs::read(&f.cert).unwrap();
    let new_leaf = pki().issue_server_certificate(&f.cert, &f.key);
    let Err(ReloadError::Config(e)) = reload(&broker).await else {
        panic!("bad TOML must be refused")
    };
    assert_eq!(
        (e.file.as_str(), e.line, e.key.as_str()),
        (
            f.config.display().to_string().as_str(),
            line_of(&bad, "frobnicate"),
            "frobnicate"
        ),
        "{e}"
    );
    assert_eq!(
        try_login(addr, "carol", "carol-pw").await,
        Err("not-authorized".into())
    );
    let (_, leaf) = direct_tls(broker.addr(DIRECT_TLS)).await;
    assert_eq!(
        leaf,
        rustls_pemfile::certs(&mut first_leaf.as_slice())
            .next()
            .unwrap()
            .unwrap()
            .to_vec(),
        "the old certificate stays"
    );

    // A bad accounts line: the file and line are named; carol (a good line) is not added.
    std::fs::write(&f.config, &good).unwrap();
    std::fs::write(
        &f.accounts,
        "alice plain:alice-pw\ncarol plain:carol-pw\ndave scram:bogus\n",
    )
    .unwrap();
    let Err(ReloadError::Accounts(e)) = reload(&broker).await else {
        panic!("a bad accounts line must be refused")
    };
    let expected = format!("{}:3: ", f.accounts.display());
    assert!(e.to_string().starts_with(&expected), "{e}");
    assert_eq!(
        try_login(addr, "carol", "carol-pw").await,
        Err("not-authorized".into())
    );

    // A change only a restart can apply is refused as a whole, naming the key.
    std::fs::write(&f.accounts, "alice plain:alice-pw\ncarol plain:carol-pw\n").unwrap();
    std::fs::write(
        &f.config,
        good.replace("timeout_ms = 10000", "timeout_ms = 5000"),
    )
    .unwrap();
    let Err(ReloadError::NeedsRestart { keys, .. }) = reload(&broker).await else {
        panic!("a restart-only change must be refused")
    };
    assert_eq!(keys, vec!["requests.timeout_ms"]);

    // A certificate that does not match the key (renewal caught half-way) is refused too.
    std::fs::write(&f.config, &good).unwrap();
    let matching = std::fs::read(&f.cert).unwrap();
    let other = f.cert.with_file_name("other-cert.pem");
    pki().issue_server_certificate(&other, &f.cert.with_file_name("other-key.pem"));
    std::fs::copy(&other, &f.cert).unwrap();
    let Err(ReloadError::Tls(e)) = reload(&broker).await else {
        panic!("a mismatched certificate and key must be refused")
    };
    assert!(e.to_string().contains("TLS configuration"), "{e}");
    std::fs::write(&f.cert, matching).unwrap();

    // The live session never noticed; once the file is fixed, everything applies at once.
    ping(&mut alice, "alive").await;
    std::fs::write(&f.config, &good).unwrap();
    let changes = reload(&broker).await.expect("reload applies");
    assert!(changes.certificate, "{changes}");
    assert_eq!(direct_tls(broker.addr(DIRECT_TLS)).await.1, new_leaf);
    assert_eq!(changes.accounts.added, 1, "{changes}");
    assert_eq!(try_login(addr, "carol", "carol-pw").await, Ok(()));
    ping(&mut alice, "still-alive").await;
    broker.shutdown().await;
}

fn sighup(pid: u32) {
    let status = std::process::Command::new("kill")
        .arg("-HUP")
        .arg(pid.to_string())
        .status()
        .expect("kill runs");
    assert!(status.success());
}

#[tokio::test]
async fn sighup_reloads_the_real_binary() {
    let f = files("sighup", "alice plain:alice-pw\n");
    let (running, addrs) = start_binary(&config_for(&f));
    wait_listening(addrs[0]).await;
    let (mut alice, _) = RawPeer::login(addrs[0], "alice", "alice-pw", Some("cwmp")).await;

    // An invalid accounts file: the broker keeps running on the old accounts.
    std::fs::write(&f.accounts, "alice plain:alice-pw\nbob\n").unwrap();
    sighup(running.child.id());
    ping(&mut alice, "after-bad").await;
    assert_eq!(
        try_login(addrs[0], "bob", "bob-pw").await,
        Err("not-authorized".into())
    );

    std::fs::write(&f.accounts, "alice plain:alice-pw\nbob plain:bob-pw\n").unwrap();
    sighup(running.child.id());
    // The signal is handled asynchronously: poll until bob gets in.
    let deadline = tokio::time::Instant::now() + IO_TIMEOUT;
    while try_login(addrs[0], "bob", "bob-pw").await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "SIGHUP did not add bob"
        );
    }
    ping(&mut alice, "after-good").await;
}
