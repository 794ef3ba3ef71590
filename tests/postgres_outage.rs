//! The PostgreSQL account store while its database goes away and comes back: a cluster the test
//! itself started (tests/common/pg.rs, `TestPg::own`) is stopped and started again under a running
//! broker.

mod common;

use common::pg::*;
use common::*;
use reqwest::StatusCode;
use serde_json::json;
use std::time::{Duration, Instant};

/// PostgreSQL stopped: a cached account keeps logging in, an uncached one gets
/// `<temporary-auth-failure/>` (not `<not-authorized/>`), the API answers 503, the broker stays
/// healthy; PostgreSQL started again: everything works again.
#[tokio::test]
async fn database_outage_keeps_cached_accounts_and_recovers() {
    let (mut pg, broker) = stoppable(
        "",
        "insert into crbroker_accounts (username, credential) values
             ('cached', 'plain:pw'), ('uncached', 'plain:pw')",
    )
    .await;
    // The change feed must have reached the database once (cache trusted), then `cached` is read.
    login_until(&broker, "cached", "pw", Ok(())).await;
    let (_live, _) = RawPeer::login(broker.addr(STARTTLS), "cached", "pw", Some("live")).await;

    pg.stop();
    let stopped = Instant::now();
    for _ in 0..3 {
        try_login(&broker, "cached", "pw")
            .await
            .expect("a cached account logs in while the database is down");
    }
    let started = Instant::now();
    assert_eq!(
        refusal(&broker, "uncached", "pw").await.as_deref(),
        Some("temporary-auth-failure")
    );
    println!(
        "database down: uncached login refused (temporary-auth-failure) in {:?}",
        started.elapsed()
    );
    assert_eq!(
        refusal(&broker, "cached", "wrong").await.as_deref(),
        Some("not-authorized"),
        "a cached account's wrong password is still wrong"
    );
    let (status, body) = call(&broker, "GET", "cached", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("unavailable"));
    let health = http()
        .get(format!("http://{}/healthz", broker.ops))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    // What an operator sees: the cached logins, the refused lookup, a feed that stopped reaching
    // the database.
    let before = db_metrics(&broker).await;
    assert!(before.cache_answers >= 3.0, "{before:?}");
    assert!(before.queries >= 1.0, "{before:?}");
    assert!(before.unavailable >= 1.0, "{before:?}");
    assert!(before.cached_accounts >= 1.0, "{before:?}");
    assert!(before.feed_age_seconds >= 0.0, "{before:?}");
    println!("database down for {:?}", stopped.elapsed());

    pg.restart().await;
    let took = login_until(&broker, "uncached", "pw", Ok(())).await;
    println!("database back: uncached account logged in after {took:?}");
    let (status, _) = put(&broker, "newcomer", json!({"password": "pw"})).await;
    assert_eq!(status, StatusCode::CREATED);
    try_login(&broker, "newcomer", "pw")
        .await
        .expect("new account after the outage");
    let after = db_metrics(&broker).await;
    assert!(after.queries > before.queries, "{before:?} {after:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while db_metrics(&broker).await.feed_age_seconds > 2.0 {
        assert!(
            Instant::now() < deadline,
            "the change feed did not reach the database again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    broker.shutdown().await;
}

/// The PostgreSQL source's figures on /metrics.
#[derive(Debug)]
struct DbMetrics {
    cache_answers: f64,
    queries: f64,
    unavailable: f64,
    cached_accounts: f64,
    feed_age_seconds: f64,
}

async fn db_metrics(broker: &TestBroker) -> DbMetrics {
    let text = http()
        .get(format!("http://{}/metrics", broker.ops))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("{name} missing: {text}"))
            .parse()
            .unwrap()
    };
    DbMetrics {
        cache_answers: value("crbroker_accounts_db_cache_answers_total"),
        queries: value("crbroker_accounts_db_queries_total"),
        unavailable: value("crbroker_accounts_db_unavailable_total"),
        cached_accounts: value("crbroker_accounts_db_cached_accounts"),
        feed_age_seconds: value("crbroker_accounts_db_feed_age_seconds"),
    }
}

/// Past `stale_ttl_secs` without reaching the database, cached accounts are not trusted either:
/// their logins get `<temporary-auth-failure/>` too.
#[tokio::test]
async fn cached_accounts_stop_logging_in_stale_ttl_after_the_last_contact() {
    let (mut pg, broker) = stoppable(
        "stale_ttl_secs = 2",
        "insert into crbroker_accounts (username, credential) values ('brief', 'plain:pw')",
    )
    .await;
    login_until(&broker, "brief", "pw", Ok(())).await;
    pg.stop();
    let stopped = Instant::now();
    try_login(&broker, "brief", "pw")
        .await
        .expect("still trusted right after the stop");
    login_until(&broker, "brief", "pw", Err("temporary-auth-failure")).await;
    let took = stopped.elapsed();
    println!("stale_ttl_secs = 2, poll 1 s: cached account refused {took:?} after the stop");
    // The last contact was at most one poll interval before the stop.
    assert!(
        took > Duration::from_secs(1) && took < Duration::from_secs(4),
        "{took:?}"
    );
    broker.shutdown().await;
}

/// A cluster of the test's own, migrated, with `insert` run, and a broker on it that polls
/// every second and gives up on a query after 500 ms (plus `extra` settings).
async fn stoppable(extra: &str, insert: &str) -> (TestPg, TestBroker) {
    let pg = TestPg::own().await;
    pg.migrate().await;
    let broker = TestBroker::start_config(config(
        &pg,
        &no_login_delays(),
        &format!("poll_interval_secs = 1\nquery_timeout_ms = 500\n{extra}"),
    ))
    .await;
    pg.sql(insert).await;
    (pg, broker)
}

/// Login delays out of the way: these tests fail logins on purpose.
fn no_login_delays() -> TestOptions {
    TestOptions {
        login_delay_account_free: 100,
        login_delay_address_free: 1000,
        ..TestOptions::default()
    }
}
