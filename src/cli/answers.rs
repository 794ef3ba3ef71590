//! The API's answers as the CLI reads them, and how each prints for a person: the one line of a
//! connection request, the table of sessions, UTC dates. Only the fields the CLI shows; the
//! server side's types (src/ops/api) serialize them.

use crbroker::reload::ReloadChanges;
use serde::Deserialize;

#[derive(Deserialize)]
pub struct CrAnswer {
    pub outcome: String,
    pub jid: Option<String>,
    pub condition: Option<String>,
    pub text: Option<String>,
    pub latency_ms: f64,
}

impl CrAnswer {
    /// One line: outcome, the CPE's JID, what happened, latency.
    pub fn line(&self, asked: &str) -> String {
        let jid = self.jid.as_deref().unwrap_or(asked);
        let what = match self.outcome.as_str() {
            "result" => "accepted the connection request".to_string(),
            "cpe_error" => "refused the connection request".to_string(),
            "offline" => "is not online".to_string(),
            "timeout" => "did not answer in time".to_string(),
            "overload" => "has too many requests pending (or the broker has)".to_string(),
            "cpe_gone" => "ended its session before answering".to_string(),
            other => format!("answered {other}"),
        };
        let mut line = format!("{}: {jid} {what} ({:.1} ms)", self.outcome, self.latency_ms);
        if let Some(condition) = &self.condition {
            line.push_str(&format!("; error {condition}"));
        }
        if let Some(text) = &self.text {
            line.push_str(&format!(": {text:?}"));
        }
        line
    }
}

#[derive(Deserialize)]
pub struct Session {
    pub jid: String,
    pub role: String,
    pub since: u64,
    pub peer: Option<String>,
    pub tls_version: Option<String>,
    pub cipher_suite: Option<String>,
    pub sasl_mechanism: Option<String>,
    pub requests_pending: usize,
}

#[derive(Deserialize)]
pub struct Presence {
    pub jid: String,
    pub online: bool,
    pub sessions: Vec<Session>,
}

#[derive(Deserialize)]
pub struct Counts {
    pub cpe: u64,
    pub acs_account: u64,
    pub component: u64,
}

#[derive(Deserialize)]
pub struct Page {
    pub sessions: Vec<Session>,
    pub next_cursor: Option<String>,
    pub counts: Counts,
}

#[derive(Deserialize)]
pub struct Closed {
    pub jid: String,
    pub closed: usize,
}

#[derive(Deserialize)]
pub struct Reloaded {
    pub source: String,
    pub changes: ReloadChanges,
}

/// A table of sessions, columns as wide as their widest cell.
pub fn print_sessions(sessions: &[Session]) {
    if sessions.is_empty() {
        return;
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let dash = || "-".to_string();
    let mut rows = vec![[
        "JID",
        "ROLE",
        "SINCE (UTC)",
        "PEER",
        "TLS",
        "MECHANISM",
        "PENDING",
    ]
    .map(str::to_string)];
    rows.extend(sessions.iter().map(|s| {
        [
            s.jid.clone(),
            s.role.clone(),
            format!(
                "{} ({} ago)",
                utc(s.since),
                ago(now.saturating_sub(s.since))
            ),
            s.peer.clone().unwrap_or_else(dash),
            match (&s.tls_version, &s.cipher_suite) {
                (Some(version), Some(suite)) => format!("{version} {suite}"),
                (Some(version), None) => version.clone(),
                _ => dash(),
            },
            s.sasl_mechanism.clone().unwrap_or_else(dash),
            s.requests_pending.to_string(),
        ]
    }));
    let mut widths = [0; 7];
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    for row in &rows {
        let mut line = String::new();
        for (cell, width) in row.iter().zip(widths) {
            line.push_str(&format!("{cell:<width$}  "));
        }
        println!("{}", line.trim_end());
    }
}

/// `YYYY-MM-DD hh:mm:ss` in UTC for seconds since the Unix epoch (days to a civil date:
/// Howard Hinnant's algorithm, valid for every u64 second of the proleptic Gregorian calendar
/// this will see).
fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rest = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

/// A duration a person reads: `42s`, `5m12s`, `3h04m`, `2d05h`.
fn ago(secs: u64) -> String {
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m{:02}s", secs / 60, secs % 60),
        3600..=86_399 => format!("{}h{:02}m", secs / 3600, secs / 60 % 60),
        _ => format!("{}d{:02}h", secs / 86_400, secs / 3600 % 24),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(utc(1_795_926_896), "2026-11-29 04:34:56");
        assert_eq!(utc(4_107_542_399), "2100-02-28 23:59:59");
    }

    #[test]
    fn durations() {
        assert_eq!(ago(59), "59s");
        assert_eq!(ago(312), "5m12s");
        assert_eq!(ago(3 * 3600 + 4 * 60), "3h04m");
        assert_eq!(ago(2 * 86_400 + 5 * 3600), "2d05h");
    }
}
