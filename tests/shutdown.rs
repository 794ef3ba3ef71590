//! Graceful shutdown of the real binary on SIGTERM: pending requests answered, streams told
//! `<system-shutdown/>`, exit status 0 within the configured bound.

mod common;

use common::binary::*;
use common::*;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[tokio::test]
async fn sigterm_answers_pending_requests_and_exits_zero_in_time() {
    let options = TestOptions {
        shutdown_timeout_secs: 3,
        ..TestOptions::default()
    };
    let (mut running, addrs) = start_binary(&config_text(&options));
    // Port order follows the config: 4 c2s listeners, then the component listener.
    let (c2s, component) = (addrs[0], addrs[4]);
    for addr in &addrs {
        wait_listening(*addr).await;
    }
    let (mut cpe, jid) = RawPeer::login(c2s, "cpe-0001", "pw-cpe-0001", Some("cwmp")).await;
    let (mut idle, _) = RawPeer::login(c2s, "cpe-0002", "pw-cpe-0002", Some("cwmp")).await;
    let mut acs = RawPeer::component(component, COMPONENT_DOMAIN, COMPONENT_SECRET).await;
    acs.expect_handshake_ok().await;
    for i in 0..3 {
        acs.send(&connection_request(
            &format!("p{i}"),
            &jid,
            Some(COMPONENT_DOMAIN),
            "u",
            "p",
        ))
        .await;
    }
    for _ in 0..3 {
        cpe.element().await; // delivered, never answered
    }
    let signalled = Instant::now();
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(running.child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());

    let mut answered = Vec::new();
    for _ in 0..3 {
        let answer = acs.element().await;
        assert_eq!(
            error_condition(&answer).as_deref(),
            Some("service-unavailable"),
            "{}",
            acs.transcript
        );
        answered.push(answer.attr("id").unwrap().to_string());
    }
    answered.sort();
    assert_eq!(answered, ["p0", "p1", "p2"]);
    acs.expect_stream_error("system-shutdown").await;
    cpe.expect_stream_error("system-shutdown").await;
    idle.expect_stream_error("system-shutdown").await;

    let exit = loop {
        if let Some(exit) = running.child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(3 + 2),
            "broker still running past its shutdown bound"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(exit.success(), "exit status {exit:?}");
    // Nothing listens any more.
    assert!(tokio::net::TcpStream::connect(c2s).await.is_err());
}

#[tokio::test]
async fn broker_refuses_a_bad_config_with_file_line_and_key() {
    let path = pki().dir.join("bad.toml");
    std::fs::write(&path, "[server]\ndomain = \"example.net\"\nbogus_key = 1\n").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_crbroker"))
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("bad.toml:3: bogus_key:"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    let run = Command::new(env!("CARGO_BIN_EXE_crbroker"))
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!run.status.success());
    assert!(String::from_utf8_lossy(&run.stderr).contains("bad.toml:3: bogus_key:"));
}

/// The first signal waits (up to the bound) for connections to close; a second one exits at once.
/// An ACS that stops reading keeps its connection's task stuck in a write, so the graceful
/// shutdown cannot finish by itself here.
#[tokio::test]
async fn second_signal_exits_at_once() {
    let options = TestOptions {
        shutdown_timeout_secs: 60,
        stuck_session_grace_secs: 60,
        ..TestOptions::default()
    };
    let (mut running, addrs) = start_binary(&config_text(&options));
    for addr in &addrs {
        wait_listening(*addr).await;
    }
    // A small receive buffer: the broker's writes of answers get stuck after a few kilobytes,
    // long before its bounded outbox would overflow and close the connection itself (which
    // happened under load with the default buffers of several megabytes, and let the graceful
    // shutdown finish on its own).
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(addrs[4]).await.unwrap();
    let mut acs = RawPeer::component_on(tcp, COMPONENT_DOMAIN, COMPONENT_SECRET).await;
    acs.expect_handshake_ok().await;
    // Requests to an offline CPE are answered at once; the ACS never reads the answers.
    let request = connection_request(
        "x",
        "nobody@example.net/cwmp",
        Some(COMPONENT_DOMAIN),
        "u",
        "p",
    );
    let flood: Vec<u8> = request.repeat(100).into_bytes();
    // Progress of the flood: when our writes stop progressing, the broker has stopped reading
    // this connection, which it does only while its own write of answers to us is stuck.
    let sent = Arc::new(AtomicU64::new(0));
    let progress = sent.clone();
    tokio::spawn(async move {
        // Until the broker stops reading (the test bounds the time).
        while acs.try_send(&flood).await.is_ok() {
            progress.fetch_add(1, Ordering::Relaxed);
        }
        // Keep the connection open (and unread) until the test ends.
        std::future::pending::<()>().await;
    });
    let started = Instant::now();
    let mut last = (0, Instant::now());
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = sent.load(Ordering::Relaxed);
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(1) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the broker kept reading the ACS's flood: its writes never got stuck"
        );
    }
    let pid = running.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let status = running.child.try_wait().unwrap();
    assert!(
        status.is_none(),
        "graceful shutdown should still be waiting for the stuck connection, but the broker \
         exited ({status:?}) after {} writes",
        sent.load(Ordering::Relaxed)
    );
    let second = Instant::now();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let exit = loop {
        if let Some(exit) = running.child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            second.elapsed() < Duration::from_secs(3),
            "second signal did not end the broker"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(exit.code(), Some(1), "{exit:?}");
}
