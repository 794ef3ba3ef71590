//! The scrape phase: with the sessions online and idle, GET the broker's `/metrics` K times
//! (one HTTP/1.1 connection each, as a scraper without keep-alive would) and report the broker
//! CPU per scrape. Plain HTTP on loopback; the tool refuses any other address.

use crate::procstat::CpuMark;
use crate::report::ScrapePhase;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One GET /metrics; returns the body.
async fn scrape_once(addr: SocketAddr) -> Result<String, String> {
    let mut tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut response = Vec::with_capacity(64 * 1024);
    tcp.read_to_end(&mut response)
        .await
        .map_err(|e| format!("read: {e}"))?;
    let response = String::from_utf8(response).map_err(|_| "response is not UTF-8".to_string())?;
    if !response.starts_with("HTTP/1.1 200") {
        let status = response.lines().next().unwrap_or("");
        return Err(format!("GET /metrics: {status}"));
    }
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    Ok(body)
}

/// The value of the `crbroker_sessions_online{role="cpe"}` line.
fn cpe_sessions(body: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix("crbroker_sessions_online{role=\"cpe\"} "))
        .and_then(|v| v.trim().parse().ok())
}

pub async fn run(
    addr: SocketAddr,
    scrapes: usize,
    pid: Option<u32>,
) -> Result<ScrapePhase, String> {
    let cpu = CpuMark::now(pid);
    let started = Instant::now();
    let mut body = String::new();
    for _ in 0..scrapes {
        body = tokio::time::timeout(Duration::from_secs(10), scrape_once(addr))
            .await
            .map_err(|_| "GET /metrics timed out".to_string())??;
    }
    let wall = started.elapsed();
    let used = cpu.since(pid);
    Ok(ScrapePhase {
        scrapes,
        body_bytes: body.len(),
        cpe_sessions_reported: cpe_sessions(&body),
        wall_ms_per_scrape: wall.as_secs_f64() * 1e3 / scrapes.max(1) as f64,
        broker_cpu_ms_per_scrape: used.broker_s.map(|s| s * 1e3 / scrapes.max(1) as f64),
        cpu: used,
    })
}
