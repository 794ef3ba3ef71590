//! The ops HTTP listener over real HTTP: `/metrics` parsed by a Prometheus text parser while a
//! connection request is relayed, `/healthz` and `/readyz` (also during shutdown), and JSON logs
//! from the real binary.

mod common;

use common::binary::{free_ports, wait_listening, Running};
use common::*;
use prometheus_parse::{Scrape, Value};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

async fn get(addr: std::net::SocketAddr, path: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(format!("http://{addr}{path}"))
        .timeout(IO_TIMEOUT)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

async fn scrape(addr: std::net::SocketAddr) -> Scrape {
    let response = get(addr, "/metrics").await;
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let body = response.text().await.unwrap();
    Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).expect("Prometheus text format")
}

/// The value of a counter or gauge sample `metric` with the label `label` (if given).
fn value(scrape: &Scrape, metric: &str, label: Option<(&str, &str)>) -> f64 {
    let sample = scrape
        .samples
        .iter()
        .find(|s| s.metric == metric && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
        .unwrap_or_else(|| panic!("no sample {metric} {label:?}"));
    match sample.value {
        Value::Counter(v) | Value::Gauge(v) => v,
        ref other => panic!("{metric} is not a counter or gauge: {other:?}"),
    }
}

/// The observation count (the `+Inf` bucket) of histogram `metric` with `labels`.
fn histogram_count(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    let sample = scrape
        .samples
        .iter()
        .find(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
        .unwrap_or_else(|| panic!("no histogram {metric} {labels:?}"));
    let Value::Histogram(buckets) = &sample.value else {
        panic!("{metric} is not a histogram");
    };
    buckets
        .iter()
        .find(|b| b.less_than == f64::INFINITY)
        .expect("+Inf bucket")
        .count
}

async fn send_request(acs: &mut RawPeer, id: &str, to: &str) {
    acs.send(&connection_request(
        id,
        to,
        Some(COMPONENT_DOMAIN),
        "u",
        "p",
    ))
    .await;
}

const ROUND_TRIP: &str = "crbroker_request_round_trip_seconds";

#[tokio::test]
async fn metrics_move_as_a_connection_request_is_relayed() {
    let broker = TestBroker::start().await;
    let before = scrape(broker.ops).await;
    assert_eq!(
        value(&before, "crbroker_sessions_online", Some(("role", "cpe"))),
        0.0
    );

    let (mut cpe, jid) = broker.cpe("cpe-0007").await;
    let mut acs = broker.raw_acs().await;
    send_request(&mut acs, "m1", &jid).await;
    let request = cpe.element().await;
    answer_result(&mut cpe, request.attr("id").unwrap()).await;
    let answer = acs.element().await;
    assert_eq!(
        (answer.attr("id"), answer.attr("type")),
        (Some("m1"), Some("result"))
    );
    // One request to a CPE that is not online: answered at once, outcome `offline`.
    send_request(&mut acs, "m2", "nobody@example.net").await;
    assert_eq!(acs.element().await.attr("type"), Some("error"));

    let after = scrape(broker.ops).await;
    let delta = |metric: &str| value(&after, metric, None) - value(&before, metric, None);
    assert_eq!(delta("crbroker_requests_relayed_total"), 1.0);
    assert_eq!(delta("crbroker_requests_answered_result_total"), 1.0);
    assert_eq!(delta("crbroker_requests_offline_total"), 1.0);
    assert_eq!(delta("crbroker_logins_ok_total"), 1.0);
    let histogram_delta = |metric: &str, labels: &[(&str, &str)]| {
        histogram_count(&after, metric, labels) - histogram_count(&before, metric, labels)
    };
    assert_eq!(
        histogram_delta(ROUND_TRIP, &[("outcome", "cpe_result")]),
        1.0
    );
    assert_eq!(histogram_delta(ROUND_TRIP, &[("outcome", "offline")]), 1.0);
    for outcome in ["cpe_error", "timeout", "overload", "cpe_gone"] {
        assert_eq!(
            histogram_delta(ROUND_TRIP, &[("outcome", outcome)]),
            0.0,
            "{outcome}"
        );
    }
    // RawPeer logs in with PLAIN over STARTTLS.
    let login = [("mechanism", "PLAIN"), ("outcome", "ok")];
    assert_eq!(
        histogram_delta("crbroker_login_duration_seconds", &login),
        1.0
    );
    let tls = [("outcome", "ok")];
    assert_eq!(
        histogram_delta("crbroker_tls_handshake_duration_seconds", &tls),
        1.0
    );
    assert_eq!(
        value(&after, "crbroker_sessions_online", Some(("role", "cpe"))),
        1.0
    );
    assert_eq!(
        value(
            &after,
            "crbroker_sessions_online",
            Some(("role", "component"))
        ),
        1.0
    );
    assert_eq!(
        value(
            &after,
            "crbroker_sessions_online",
            Some(("role", "acs_account"))
        ),
        0.0
    );
    assert_eq!(value(&after, "crbroker_requests_pending", None), 0.0);
    assert_eq!(value(&after, "crbroker_connections_pre_auth", None), 0.0);
    assert!(value(&after, "process_resident_memory_bytes", None) > 1e6);
    // At least the listeners and the two peers' connections.
    assert!(value(&after, "process_open_fds", None) >= 8.0);
    assert!(value(&after, "process_cpu_seconds_total", None) > 0.0);

    // A request left pending shows in the gauge; the CPE leaving answers it (`cpe_gone`).
    send_request(&mut acs, "m3", &jid).await;
    cpe.element().await;
    assert_eq!(
        value(&scrape(broker.ops).await, "crbroker_requests_pending", None),
        1.0
    );
    drop(cpe);
    assert_eq!(
        error_condition(&acs.element().await).as_deref(),
        Some("service-unavailable")
    );
    let last = scrape(broker.ops).await;
    assert_eq!(
        histogram_count(&last, ROUND_TRIP, &[("outcome", "cpe_gone")]),
        1.0
    );
    assert_eq!(value(&last, "crbroker_requests_pending", None), 0.0);
    assert_eq!(
        value(&last, "crbroker_sessions_online", Some(("role", "cpe"))),
        0.0
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn an_unauthenticated_connection_shows_as_pre_auth() {
    let broker = TestBroker::start().await;
    let _peer = RawPeer::tcp(broker.addr(STARTTLS)).await;
    let ops = broker.ops;
    let mut pre_auth = 0.0;
    let deadline = Instant::now() + IO_TIMEOUT;
    while pre_auth != 1.0 && Instant::now() < deadline {
        pre_auth = value(&scrape(ops).await, "crbroker_connections_pre_auth", None);
    }
    assert_eq!(pre_auth, 1.0);
    broker.shutdown().await;
}

#[derive(serde::Deserialize)]
struct Readiness {
    ready: bool,
    reason: Option<String>,
}

#[tokio::test]
async fn healthz_and_readyz_answer_and_readyz_turns_503_during_shutdown() {
    let broker = TestBroker::start_with(TestOptions {
        shutdown_timeout_secs: 30,
        stuck_session_grace_secs: 30,
        ..TestOptions::default()
    })
    .await;
    let ops = broker.ops;
    let health = get(ops, "/healthz").await;
    assert_eq!(health.status(), 200);
    let ready = get(ops, "/readyz").await;
    assert_eq!(ready.status(), 200);
    let body: Readiness = ready.json().await.unwrap();
    assert!(body.ready && body.reason.is_none());
    assert_eq!(get(ops, "/nothing-here").await.status(), 404);

    // Keep the graceful shutdown waiting: a CPE floods the server with pings and never reads
    // the answers, so the broker's write to it gets stuck.
    let (mut cpe, _) = broker.cpe("cpe-0008").await;
    let ping = format!("<iq type='get' id='p' to='{DOMAIN}'><ping xmlns='urn:xmpp:ping'/></iq>");
    let flood = ping.repeat(2_000).into_bytes();
    let sent = Arc::new(AtomicU64::new(0));
    let progress = sent.clone();
    tokio::spawn(async move {
        while cpe.try_send(&flood).await.is_ok() {
            progress.fetch_add(1, Ordering::Relaxed);
        }
        std::future::pending::<()>().await;
    });
    // Stuck once our writes stop progressing for a second (the broker stopped reading us).
    let mut last = (0, Instant::now());
    let started = Instant::now();
    while last.1.elapsed() < Duration::from_secs(1) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the flood never got stuck"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = sent.load(Ordering::Relaxed);
        if now != last.0 {
            last = (now, Instant::now());
        }
    }
    let mut broker = broker;
    let shutting_down = tokio::spawn(broker.broker.take().unwrap().shutdown());
    let deadline = Instant::now() + IO_TIMEOUT;
    let not_ready = loop {
        let response = get(ops, "/readyz").await;
        if response.status() == 503 {
            break response;
        }
        assert_eq!(response.status(), 200);
        assert!(
            Instant::now() < deadline,
            "/readyz stayed 200 during shutdown"
        );
    };
    assert!(
        !shutting_down.is_finished(),
        "the shutdown did not wait for the stuck session"
    );
    let body: Readiness = not_ready.json().await.unwrap();
    assert!(!body.ready);
    assert_eq!(body.reason.as_deref(), Some("shutting down"));
    // Alive all the same.
    assert_eq!(get(ops, "/healthz").await.status(), 200);
    shutting_down.abort();
}

#[tokio::test]
async fn ops_listener_can_be_turned_off() {
    let text = config_text(&TestOptions::default()).replace("[ops]\n", "[ops]\nenabled = false\n");
    let config = crbroker::config::Config::parse(&text, "t.toml", pki().dir.clone()).unwrap();
    let broker = crbroker::Broker::start(config).await.unwrap();
    assert_eq!(broker.ops_addr(), None);
    broker.shutdown().await;
}

/// The real binary on `config_text` with `[log]` appended, stdout piped; waits until ready.
async fn start_logging_binary(log: &str, rust_log: Option<&str>) -> (Running, String) {
    let ports = free_ports(6);
    let mut text = config_text(&TestOptions::default());
    for port in &ports {
        text = text.replacen("127.0.0.1:0", &format!("127.0.0.1:{port}"), 1);
    }
    text.push_str(&format!("\n[log]\n{log}\n"));
    let path = pki().dir.join(format!("log-{}.toml", ports[0]));
    std::fs::write(&path, text).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_crbroker"));
    command
        .arg("--config")
        .arg(&path)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(directives) = rust_log {
        command.env("RUST_LOG", directives);
    }
    let mut running = Running {
        child: command.spawn().expect("broker binary starts"),
    };
    let ops: std::net::SocketAddr = format!("127.0.0.1:{}", ports[5]).parse().unwrap();
    wait_listening(ops).await;
    // Ready means "crbroker started" has been logged (if the level lets it through).
    let deadline = Instant::now() + IO_TIMEOUT;
    while get(ops, "/readyz").await.status() != 200 {
        assert!(Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut stdout = running.child.stdout.take().unwrap();
    let _ = running.child.kill();
    let mut out = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut out).unwrap();
    (running, out)
}

/// `[log] format = "json"`: one JSON object per line with the level and the message;
/// `RUST_LOG` is unset so `[log] level` applies.
#[tokio::test]
async fn binary_logs_json_lines() {
    let (_running, out) = start_logging_binary("format = \"json\"\nlevel = \"info\"", None).await;
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let started = lines
        .iter()
        .find(|l| l["fields"]["message"] == "crbroker started")
        .unwrap_or_else(|| panic!("no start line in {out}"));
    assert_eq!(started["level"], "INFO");
    assert_eq!(started["fields"]["domain"], DOMAIN);
}

/// `RUST_LOG`, when set, wins over `[log] level`.
#[tokio::test]
async fn rust_log_wins_over_the_configured_level() {
    let (_running, out) =
        start_logging_binary("format = \"json\"\nlevel = \"info\"", Some("warn")).await;
    assert!(
        !out.contains("crbroker started"),
        "info lines despite RUST_LOG=warn: {out}"
    );
}

#[test]
fn a_bad_log_level_is_refused_with_file_line_and_key() {
    let text = format!(
        "{}\n[log]\nlevel = \"info,[unclosed\"\n",
        config_text(&TestOptions::default())
    );
    let error = crbroker::config::Config::parse(&text, "bad-log.toml", pki().dir.clone())
        .unwrap_err()
        .to_string();
    let line = text.lines().position(|l| l.starts_with("level =")).unwrap() + 1;
    assert!(
        error.starts_with(&format!("bad-log.toml:{line}: log.level: ")),
        "{error}"
    );
}
