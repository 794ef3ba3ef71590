//! Memory comes back: the broker's RSS after 1,000 connections that each sent an oversized stanza
//! returns close to where it started.

mod common;

use common::binary::*;
use common::*;
use std::time::Duration;

#[tokio::test]
async fn rss_returns_after_a_thousand_oversized_stanza_connections() {
    let (running, addrs) = start_binary(&config_text(&TestOptions::default()));
    for addr in &addrs {
        wait_listening(*addr).await;
    }
    let c2s = addrs[0];
    let oversized = format!(
        "{CLIENT_HEADER}<message><body>{}</body></message>",
        "a".repeat(64 * 1024)
    );
    let attack = |n: usize| {
        let oversized = oversized.clone();
        async move {
            for _ in 0..n {
                let mut peer = RawPeer::tcp(c2s).await;
                let _ = peer.try_send(oversized.as_bytes()).await;
                peer.expect_stream_error("policy-violation").await;
            }
        }
    };
    // Warm up allocator arenas and the runtime's worker state first.
    attack(100).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = running.rss_kib();
    let tasks: Vec<_> = (0..10).map(|_| tokio::spawn(attack(100))).collect();
    for task in tasks {
        task.await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = running.rss_kib();
    println!(
        "broker RSS before {before} KiB, after 1,000 oversized-stanza connections {after} KiB"
    );
    // 1,000 connections x 16 KiB stanza limit would be 16 MB if anything were kept.
    assert!(
        after < before + 4 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
    // The broker still serves logins.
    RawPeer::login(c2s, "cpe-0001", "pw-cpe-0001", Some("cwmp")).await;
}
