//! The run report: figures, the human-readable table, the JSON line, and the side-by-side
//! comparison of several reports (`crbroker-bench table`).

use crate::procstat::CpuUsed;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Latency {
    pub count: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

/// Nearest-rank percentiles of latencies given in microseconds.
pub fn summarize(mut us: Vec<u32>) -> Latency {
    if us.is_empty() {
        return Latency::default();
    }
    us.sort_unstable();
    let n = us.len();
    let pick = |p: f64| {
        let rank = ((p / 100.0) * n as f64).ceil() as usize;
        us[rank.clamp(1, n) - 1] as f64 / 1e3
    };
    Latency {
        count: n,
        p50_ms: pick(50.0),
        p90_ms: pick(90.0),
        p99_ms: pick(99.0),
        max_ms: us[n - 1] as f64 / 1e3,
        mean_ms: us.iter().map(|&v| v as f64).sum::<f64>() / n as f64 / 1e3,
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LoginPhase {
    pub attempted: usize,
    pub ok: usize,
    pub failed: usize,
    pub failure_samples: Vec<String>,
    /// From the first connect to the last bind result.
    pub secs: f64,
    pub rate_per_s: f64,
    pub latency: Latency,
    pub cpu: CpuUsed,
    pub broker_cpu_per_login_ms: Option<f64>,
    pub tool_cpu_per_login_ms: Option<f64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct IdlePhase {
    pub settle_secs: f64,
    pub broker_rss_before_kib: Option<u64>,
    pub broker_rss_idle_kib: Option<u64>,
    /// (idle RSS - RSS before the sessions) / sessions online.
    pub broker_rss_per_session_bytes: Option<f64>,
    /// Broker CPU seconds used while the sessions idled for `settle_secs`.
    pub broker_cpu_idle_s: Option<f64>,
    pub tool_rss_kib: Option<u64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CrPhase {
    /// "open" (fixed rate) or "closed" (fixed number in flight).
    pub mode: String,
    pub target_rate: Option<f64>,
    pub achieved_send_rate: Option<f64>,
    /// Open loop: the most the sender fell behind its schedule.
    pub max_send_lag_ms: Option<f64>,
    pub in_flight: Option<usize>,
    /// Sending window.
    pub send_secs: f64,
    /// From the first request to the last answer.
    pub secs: f64,
    pub sent: u64,
    pub answered_ok: u64,
    pub answered_error: u64,
    /// Error answers by condition.
    pub errors: BTreeMap<String, u64>,
    pub timeouts: u64,
    pub duplicates: u64,
    pub mismatches: u64,
    /// Answers that came after the tool had counted a timeout.
    pub late: u64,
    /// Stanzas the component received that were not IQ answers.
    pub unexpected: u64,
    pub mismatch_samples: Vec<String>,
    /// Answers (result or error) per second over `secs`.
    pub throughput_per_s: f64,
    /// Latency of `result` answers, from the request's send to the answer's arrival.
    pub latency: Latency,
    pub cpu: CpuUsed,
    pub broker_cpu_per_cr_us: Option<f64>,
    pub tool_cpu_per_cr_us: Option<f64>,
    /// Why the phase stopped early, if it did.
    pub error: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Teardown {
    /// Broker VmRSS after the connection-request phases, sessions still open.
    pub broker_rss_before_close_kib: Option<u64>,
    pub closed_cleanly: u64,
    pub closed_uncleanly: u64,
    pub secs: f64,
    pub broker_rss_after_close_kib: Option<u64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Report {
    pub label: String,
    pub sessions: usize,
    pub concurrency: usize,
    pub transport: String,
    pub broker_pid: Option<u32>,
    /// 1-minute load average when the run started.
    pub load_average_at_start: Option<f64>,
    pub passed: bool,
    pub failures: Vec<String>,
    pub login: LoginPhase,
    pub idle: IdlePhase,
    pub open_loop: Option<CrPhase>,
    pub closed_loop: Option<CrPhase>,
    pub crs_received_by_cpes: u64,
    pub crs_with_bad_credentials: u64,
    pub sessions_lost: u64,
    pub sessions_lost_samples: Vec<String>,
    pub teardown: Teardown,
    /// `--scrape ADDR`: GET /metrics with the sessions online.
    #[serde(default)]
    pub scrape: Option<ScrapePhase>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ScrapePhase {
    pub scrapes: usize,
    /// Size of the last /metrics body.
    pub body_bytes: usize,
    /// `crbroker_sessions_online{role="cpe"}` in the last scrape (a check: it should equal the
    /// sessions online).
    pub cpe_sessions_reported: Option<f64>,
    pub wall_ms_per_scrape: f64,
    pub broker_cpu_ms_per_scrape: Option<f64>,
    pub cpu: CpuUsed,
}

fn opt(v: Option<f64>, decimals: usize) -> String {
    match v {
        Some(v) => format!("{v:.decimals$}"),
        None => "-".into(),
    }
}

impl Report {
    /// Check the figures and fill `passed` / `failures`.
    pub fn judge(&mut self) {
        let mut failures = Vec::new();
        if self.login.failed > 0 {
            failures.push(format!("{} logins failed", self.login.failed));
        }
        if let Some(scrape) = &self.scrape {
            if scrape.cpe_sessions_reported != Some(self.login.ok as f64) {
                failures.push(format!(
                    "/metrics reported {} CPE sessions, {} were online",
                    opt(scrape.cpe_sessions_reported, 0),
                    self.login.ok
                ));
            }
        }
        if self.sessions_lost > 0 {
            failures.push(format!(
                "{} sessions ended by the server during the run",
                self.sessions_lost
            ));
        }
        for phase in [&self.open_loop, &self.closed_loop].into_iter().flatten() {
            let mode = &phase.mode;
            if phase.mismatches > 0 {
                failures.push(format!(
                    "{mode}-loop: {} mismatched answers",
                    phase.mismatches
                ));
            }
            if phase.duplicates > 0 {
                failures.push(format!(
                    "{mode}-loop: {} duplicate answers",
                    phase.duplicates
                ));
            }
            if phase.timeouts > 0 {
                failures.push(format!(
                    "{mode}-loop: {} requests unanswered",
                    phase.timeouts
                ));
            }
            if let Some(e) = &phase.error {
                failures.push(format!("{mode}-loop stopped: {e}"));
            }
        }
        self.passed = failures.is_empty();
        self.failures = failures;
    }

    pub fn human(&self) -> String {
        let mut s = String::new();
        let l = &self.login;
        let _ = writeln!(
            s,
            "== crbroker-bench: {} ({} sessions, {}, connect concurrency {}) ==",
            self.label, self.sessions, self.transport, self.concurrency
        );
        let _ = writeln!(
            s,
            "(load average at start {}; 'others' = CPU of every other process in the phase)",
            opt(self.load_average_at_start, 2)
        );
        let _ = writeln!(s, "Logins");
        let _ = writeln!(s, "  ok / failed              {} / {}", l.ok, l.failed);
        for f in &l.failure_samples {
            let _ = writeln!(s, "    e.g. {f}");
        }
        let _ = writeln!(s, "  time until all online    {:.2} s", l.secs);
        let _ = writeln!(s, "  login rate               {:.0} /s", l.rate_per_s);
        let _ = writeln!(
            s,
            "  login latency p50 / p99 / max   {:.1} / {:.1} / {:.1} ms",
            l.latency.p50_ms, l.latency.p99_ms, l.latency.max_ms
        );
        let _ = writeln!(
            s,
            "  CPU broker / tool / others   {} / {} / {} s   (per login: broker {} ms, tool {} ms)",
            opt(l.cpu.broker_s, 2),
            opt(l.cpu.tool_s, 2),
            opt(l.cpu.others_s, 2),
            opt(l.broker_cpu_per_login_ms, 3),
            opt(l.tool_cpu_per_login_ms, 3)
        );
        let i = &self.idle;
        let _ = writeln!(s, "Idle sessions (after {:.0} s settle)", i.settle_secs);
        let _ = writeln!(
            s,
            "  broker RSS before / idle {} / {} MiB",
            opt(i.broker_rss_before_kib.map(|k| k as f64 / 1024.0), 1),
            opt(i.broker_rss_idle_kib.map(|k| k as f64 / 1024.0), 1)
        );
        let _ = writeln!(
            s,
            "  broker RSS per session   {} KiB",
            opt(i.broker_rss_per_session_bytes.map(|b| b / 1024.0), 2)
        );
        let _ = writeln!(
            s,
            "  broker CPU while idle    {} s over {:.0} s",
            opt(i.broker_cpu_idle_s, 2),
            i.settle_secs
        );
        let _ = writeln!(
            s,
            "  tool RSS                 {} MiB",
            opt(i.tool_rss_kib.map(|k| k as f64 / 1024.0), 1)
        );
        if let Some(p) = &self.scrape {
            let _ = writeln!(s, "GET /metrics x {} with the sessions online", p.scrapes);
            let _ = writeln!(
                s,
                "  broker CPU per scrape    {} ms   (wall {:.2} ms, body {} bytes, cpe sessions reported {})",
                opt(p.broker_cpu_ms_per_scrape, 3),
                p.wall_ms_per_scrape,
                p.body_bytes,
                opt(p.cpe_sessions_reported, 0)
            );
        }
        for phase in [&self.open_loop, &self.closed_loop].into_iter().flatten() {
            let title = match phase.mode.as_str() {
                "open" => format!(
                    "Connection requests, open loop at {} /s for {:.0} s",
                    opt(phase.target_rate, 0),
                    phase.send_secs
                ),
                _ => format!(
                    "Connection requests, closed loop with {} in flight for {:.0} s",
                    phase.in_flight.unwrap_or(0),
                    phase.send_secs
                ),
            };
            let _ = writeln!(s, "{title}");
            let _ = writeln!(
                s,
                "  sent / ok / error        {} / {} / {}",
                phase.sent, phase.answered_ok, phase.answered_error
            );
            if !phase.errors.is_empty() {
                let list: Vec<String> = phase
                    .errors
                    .iter()
                    .map(|(k, v)| format!("{k}: {v}"))
                    .collect();
                let _ = writeln!(s, "  error conditions         {}", list.join(", "));
            }
            let _ = writeln!(
                s,
                "  timeouts / dup / mismatch / late   {} / {} / {} / {}",
                phase.timeouts, phase.duplicates, phase.mismatches, phase.late
            );
            for m in &phase.mismatch_samples {
                let _ = writeln!(s, "    e.g. {m}");
            }
            if let Some(rate) = phase.achieved_send_rate {
                let _ = writeln!(
                    s,
                    "  achieved send rate       {rate:.0} /s (max lag behind schedule {} ms)",
                    opt(phase.max_send_lag_ms, 1)
                );
            }
            let _ = writeln!(
                s,
                "  throughput               {:.0} answers/s",
                phase.throughput_per_s
            );
            let lat = &phase.latency;
            let _ = writeln!(
                s,
                "  latency p50 / p90 / p99 / max   {:.3} / {:.3} / {:.3} / {:.3} ms",
                lat.p50_ms, lat.p90_ms, lat.p99_ms, lat.max_ms
            );
            let _ = writeln!(
                s,
                "  CPU broker / tool / others   {} / {} / {} s   (per CR: broker {} us, tool {} us)",
                opt(phase.cpu.broker_s, 2),
                opt(phase.cpu.tool_s, 2),
                opt(phase.cpu.others_s, 2),
                opt(phase.broker_cpu_per_cr_us, 1),
                opt(phase.tool_cpu_per_cr_us, 1)
            );
            if let Some(e) = &phase.error {
                let _ = writeln!(s, "  STOPPED EARLY: {e}");
            }
        }
        let _ = writeln!(s, "CPE side");
        let _ = writeln!(
            s,
            "  CRs received / bad credentials   {} / {}",
            self.crs_received_by_cpes, self.crs_with_bad_credentials
        );
        let _ = writeln!(s, "  sessions lost            {}", self.sessions_lost);
        for m in &self.sessions_lost_samples {
            let _ = writeln!(s, "    e.g. {m}");
        }
        let t = &self.teardown;
        let _ = writeln!(
            s,
            "Teardown: {} closed cleanly, {} not, in {:.2} s; broker RSS before / after close {} / {} MiB",
            t.closed_cleanly,
            t.closed_uncleanly,
            t.secs,
            opt(t.broker_rss_before_close_kib.map(|k| k as f64 / 1024.0), 1),
            opt(t.broker_rss_after_close_kib.map(|k| k as f64 / 1024.0), 1)
        );
        if self.passed {
            let _ = writeln!(s, "RESULT: PASSED");
        } else {
            let _ = writeln!(s, "RESULT: FAILED");
            for f in &self.failures {
                let _ = writeln!(s, "  - {f}");
            }
        }
        s
    }
}

/// One row of the comparison table: a label and how to read the figure from a report.
struct Row {
    name: &'static str,
    get: fn(&Report) -> Option<f64>,
    decimals: usize,
}

#[rustfmt::skip]
fn rows() -> Vec<Row> {
    fn open(r: &Report) -> Option<&CrPhase> {
        r.open_loop.as_ref()
    }
    fn closed(r: &Report) -> Option<&CrPhase> {
        r.closed_loop.as_ref()
    }
    vec![
        Row { name: "sessions online", get: |r| Some(r.login.ok as f64), decimals: 0 },
        Row { name: "logins failed", get: |r| Some(r.login.failed as f64), decimals: 0 },
        Row { name: "time until all online (s)", get: |r| Some(r.login.secs), decimals: 2 },
        Row { name: "login rate (/s)", get: |r| Some(r.login.rate_per_s), decimals: 0 },
        Row { name: "login latency p50 (ms)", get: |r| Some(r.login.latency.p50_ms), decimals: 1 },
        Row { name: "login latency p99 (ms)", get: |r| Some(r.login.latency.p99_ms), decimals: 1 },
        Row { name: "broker CPU per login (ms)", get: |r| r.login.broker_cpu_per_login_ms, decimals: 3 },
        Row { name: "tool CPU per login (ms)", get: |r| r.login.tool_cpu_per_login_ms, decimals: 3 },
        Row { name: "others' CPU in logins (s)", get: |r| r.login.cpu.others_s, decimals: 2 },
        Row { name: "broker RSS before (MiB)", get: |r| r.idle.broker_rss_before_kib.map(|k| k as f64 / 1024.0), decimals: 1 },
        Row { name: "broker RSS idle (MiB)", get: |r| r.idle.broker_rss_idle_kib.map(|k| k as f64 / 1024.0), decimals: 1 },
        Row { name: "RSS per idle session (KiB)", get: |r| r.idle.broker_rss_per_session_bytes.map(|b| b / 1024.0), decimals: 2 },
        Row { name: "broker RSS after CRs (MiB)", get: |r| r.teardown.broker_rss_before_close_kib.map(|k| k as f64 / 1024.0), decimals: 1 },
        Row { name: "broker RSS after close (MiB)", get: |r| r.teardown.broker_rss_after_close_kib.map(|k| k as f64 / 1024.0), decimals: 1 },
        Row { name: "broker CPU while idle (s)", get: |r| r.idle.broker_cpu_idle_s, decimals: 2 },
        Row { name: "open: throughput (/s)", get: |r| open(r).map(|p| p.throughput_per_s), decimals: 0 },
        Row { name: "open: latency p50 (ms)", get: |r| open(r).map(|p| p.latency.p50_ms), decimals: 3 },
        Row { name: "open: latency p90 (ms)", get: |r| open(r).map(|p| p.latency.p90_ms), decimals: 3 },
        Row { name: "open: latency p99 (ms)", get: |r| open(r).map(|p| p.latency.p99_ms), decimals: 3 },
        Row { name: "open: latency max (ms)", get: |r| open(r).map(|p| p.latency.max_ms), decimals: 3 },
        Row { name: "open: broker CPU per CR (us)", get: |r| open(r).and_then(|p| p.broker_cpu_per_cr_us), decimals: 1 },
        Row { name: "open: others' CPU (s)", get: |r| open(r).and_then(|p| p.cpu.others_s), decimals: 2 },
        Row { name: "open: errors+timeouts", get: |r| open(r).map(|p| (p.answered_error + p.timeouts) as f64), decimals: 0 },
        Row { name: "closed: throughput (/s)", get: |r| closed(r).map(|p| p.throughput_per_s), decimals: 0 },
        Row { name: "closed: latency p50 (ms)", get: |r| closed(r).map(|p| p.latency.p50_ms), decimals: 3 },
        Row { name: "closed: latency p90 (ms)", get: |r| closed(r).map(|p| p.latency.p90_ms), decimals: 3 },
        Row { name: "closed: latency p99 (ms)", get: |r| closed(r).map(|p| p.latency.p99_ms), decimals: 3 },
        Row { name: "closed: latency max (ms)", get: |r| closed(r).map(|p| p.latency.max_ms), decimals: 3 },
        Row { name: "closed: broker CPU per CR (us)", get: |r| closed(r).and_then(|p| p.broker_cpu_per_cr_us), decimals: 1 },
        Row { name: "closed: others' CPU (s)", get: |r| closed(r).and_then(|p| p.cpu.others_s), decimals: 2 },
        Row { name: "closed: errors+timeouts", get: |r| closed(r).map(|p| (p.answered_error + p.timeouts) as f64), decimals: 0 },
    ]
}

/// Side-by-side table of several reports; ratios are each column / the first column.
pub fn comparison(reports: &[Report]) -> String {
    let mut header = vec!["metric".to_string()];
    for (i, r) in reports.iter().enumerate() {
        header.push(r.label.clone());
        if i > 0 {
            header.push(format!("{}/{}", r.label, reports[0].label));
        }
    }
    let mut table = vec![header];
    for row in rows() {
        let mut line = vec![row.name.to_string()];
        let base = (row.get)(&reports[0]);
        for (i, r) in reports.iter().enumerate() {
            let v = (row.get)(r);
            line.push(opt(v, row.decimals));
            if i > 0 {
                line.push(match (v, base) {
                    (Some(v), Some(b)) if b != 0.0 => format!("{:.2}x", v / b),
                    _ => "-".into(),
                });
            }
        }
        table.push(line);
    }
    let mut status = vec!["result".to_string()];
    for (i, r) in reports.iter().enumerate() {
        status.push(if r.passed { "PASSED" } else { "FAILED" }.into());
        if i > 0 {
            status.push(String::new());
        }
    }
    table.push(status);
    let widths: Vec<usize> = (0..table[0].len())
        .map(|c| table.iter().map(|row| row[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for (n, row) in table.iter().enumerate() {
        for (c, cell) in row.iter().enumerate() {
            if c == 0 {
                let _ = write!(out, "{cell:<w$}", w = widths[c]);
            } else {
                let _ = write!(out, "  {cell:>w$}", w = widths[c]);
            }
        }
        out.push('\n');
        if n == 0 {
            out.push_str(&"-".repeat(widths.iter().sum::<usize>() + 2 * (widths.len() - 1)));
            out.push('\n');
        }
    }
    for r in reports {
        for f in &r.failures {
            let _ = writeln!(out, "{}: {f}", r.label);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let l = summarize((1..=1000).collect());
        assert_eq!(l.count, 1000);
        assert_eq!(l.p50_ms, 0.5);
        assert_eq!(l.p90_ms, 0.9);
        assert_eq!(l.p99_ms, 0.99);
        assert_eq!(l.max_ms, 1.0);
        let one = summarize(vec![7000]);
        assert_eq!(one.p50_ms, 7.0);
        assert_eq!(one.p99_ms, 7.0);
        assert_eq!(summarize(vec![]).count, 0);
    }

    #[test]
    fn table_has_ratios() {
        let mut a = Report {
            label: "a".into(),
            ..Default::default()
        };
        a.login.rate_per_s = 1000.0;
        let mut b = a.clone();
        b.label = "b".into();
        b.login.rate_per_s = 250.0;
        let t = comparison(&[a, b]);
        assert!(t.contains("0.25x"), "{t}");
    }
}
