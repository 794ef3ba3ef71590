//! Broker-wide counters, gauges and histograms: lock-free atomics, cheap to bump on the hot path.
//! Nothing here formats anything: `ops::exposition` reads these at scrape time.

use crate::proto::sasl::Mechanism;
use crate::session::Role;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

macro_rules! counters {
    ($($(#[doc = $doc:literal])* $name:ident),* $(,)?) => {
        #[derive(Debug, Default)]
        pub struct Stats {
            $($(#[doc = $doc])* pub $name: AtomicU64,)*
            /// Sessions online by [`Role`] (indexed by `role_index`); `sessions_online` is their sum.
            pub sessions_by_role: [AtomicU64; 3],
            /// Connection-request round trip by [`CrOutcome`] (indexed by its discriminant).
            pub request_round_trip: [Histogram; CrOutcome::ALL.len()],
            /// Login duration (from `<auth/>` to success or failure) by mechanism and outcome.
            pub login_duration: [[Histogram; LoginOutcome::ALL.len()]; Mechanism::ALL.len()],
            /// TLS handshake duration: [ok, failed].
            pub tls_handshake: [Histogram; 2],
        }

        impl Stats {
            /// Every counter with its name, for logs and the admin view.
            pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name.load(Ordering::Relaxed)),)*]
            }

            /// Every counter with its name and its doc comment (the metric's help text).
            pub fn described(&self) -> [(&'static str, &'static str, u64); [$(stringify!($name)),*].len()] {
                [$((stringify!($name), concat!("" $(, $doc)*), self.$name.load(Ordering::Relaxed)),)*]
            }
        }
    };
}

counters! {
    /// TCP connections accepted on any listener (on a PROXY protocol listener: once the header
    /// is read and the client's address admitted).
    connections_accepted,
    /// TCP connections closed at accept because a cap was reached (on a PROXY protocol
    /// listener the per-address cap is checked once the header named the source).
    connections_refused_cap,
    /// Connections to a PROXY protocol listener closed at accept: their peer is not in the
    /// listener's `proxy_from`.
    connections_refused_proxy_source,
    /// Connections to a PROXY protocol listener closed because their header was malformed, too
    /// long, cut short or late (a connection closed before its first byte is not counted: a
    /// load balancer's TCP health check).
    proxy_headers_invalid,
    /// Connections currently open (any phase).
    connections_open,
    /// Sessions currently bound (CPEs and ACS accounts) or handshaken (components).
    sessions_online,
    /// SASL logins that succeeded (c2s).
    logins_ok,
    /// SASL attempts that failed (c2s).
    logins_failed,
    /// SASL attempts that waited before their check because of recent failures (src/throttle.rs).
    logins_delayed,
    /// Total milliseconds those attempts waited.
    login_delay_ms_total,
    /// Generations dropped from the login failure tables (a high rate means the tables are
    /// flooded with names or addresses and records live shorter than the window).
    login_failure_generations_dropped,
    /// Attempts refused at once because the username is longer than auth::MAX_USERNAME_LEN.
    logins_username_too_long,
    /// Successful logins with PLAIN.
    auth_plain,
    /// Successful logins with SCRAM-SHA-1.
    auth_scram_sha1,
    /// Successful logins with SCRAM-SHA-256.
    auth_scram_sha256,
    /// Successful logins with EXTERNAL (a verified device certificate).
    auth_external,
    /// XEP-0114 component handshakes accepted.
    component_handshakes_ok,
    /// XEP-0114 component handshakes refused.
    component_handshakes_failed,
    /// Connection requests (IQ get/set from an ACS to a CPE) relayed to a CPE.
    requests_relayed,
    /// Connection requests answered by the CPE with a result.
    requests_answered_result,
    /// Connection requests answered by the CPE with an error.
    requests_answered_error,
    /// Connection requests answered service-unavailable: the CPE was not online.
    requests_offline,
    /// Connection requests answered remote-server-timeout: the CPE did not answer in time.
    requests_timed_out,
    /// Connection requests answered resource-constraint: pending caps or the CPE's outbox full.
    requests_overloaded,
    /// Connection requests answered service-unavailable: the CPE's session ended first.
    requests_cpe_gone,
    /// CPE answers that arrived after the broker had answered (timeout) or for unknown ids.
    answers_late_or_unknown,
    /// Answers for an ACS connection that had gone.
    answers_acs_gone,
    /// Stanzas refused by the routing policy (e.g. CPE to CPE).
    stanzas_refused,
    /// Unsolicited stanzas from a CPE to an ACS entity cut by the CPE's rate limit
    /// (`limits.cpe_to_acs_*`); an IQ request among them was answered `policy-violation`.
    cpe_to_acs_rate_limited,
    /// Stanzas not delivered because the receiving connection's outbox was full (an IQ request
    /// among them was answered `resource-constraint`); connection requests from an ACS to a CPE
    /// are counted in `requests_overloaded` instead.
    stanzas_dropped_outbox_full,
    /// Stream errors the broker sent.
    stream_errors_sent,
    /// Connections ended by a TLS error: a fatal alert from the peer, or a record or message
    /// rustls refused (it sent its alert). Not counted: a clean close_notify.
    tls_errors,
    /// Connections whose peer closed TLS cleanly with close_notify.
    tls_close_notify,
    /// Sessions closed with conflict because a new one bound the same full JID.
    sessions_replaced,
    /// Connections closed because a write stalled for the stuck-session grace.
    sessions_stuck_closed,
    /// ACS connections closed because the answers queued for them outgrew
    /// `limits.acs_outbox_answer_bytes` (they stopped reading); their answers count as gone.
    acs_closed_answer_room_full,
    /// Connection requests sent to another cluster node (the CPE had no session here).
    cluster_requests_sent,
    /// Connection requests from another node taken for a CPE with a session here.
    cluster_requests_received,
    /// Answers other nodes relayed for requests pending here.
    cluster_answers_received,
    /// Answers relayed to the node that keeps the request pending.
    cluster_answers_relayed,
    /// Requests from another node acked here because the CPE had not answered within the ack
    /// delay (a quarter of cluster.ack_timeout_ms): slow CPEs, whose answers follow separately.
    cluster_requests_acked,
    /// Requests answered service-unavailable because this node had no NATS connection (at once,
    /// or when the connection dropped with them pending).
    cluster_unavailable,
    /// Cluster nodes declared lost (silent for cluster.node_timeout_ms).
    cluster_nodes_lost,
    /// Cluster messages dropped: malformed, or a queue toward this node full (NATS slow consumer).
    cluster_messages_dropped,
    /// 1 while this node is connected to NATS (cluster mode), else 0.
    cluster_connected,
}

impl Stats {
    #[inline]
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// A session came online (bound, or a component handshaken).
    pub fn session_opened(&self, role: Role) {
        Stats::bump(&self.sessions_online);
        Stats::bump(&self.sessions_by_role[role_index(role)]);
    }

    pub fn session_closed(&self, role: Role) {
        self.sessions_online.fetch_sub(1, Ordering::Relaxed);
        self.sessions_by_role[role_index(role)].fetch_sub(1, Ordering::Relaxed);
    }

    /// A connection request got its one answer: count it under its outcome and time it.
    pub fn request_done(&self, outcome: CrOutcome, started: Instant) {
        Stats::bump(match outcome {
            CrOutcome::CpeResult => &self.requests_answered_result,
            CrOutcome::CpeError => &self.requests_answered_error,
            CrOutcome::Offline => &self.requests_offline,
            CrOutcome::Timeout => &self.requests_timed_out,
            CrOutcome::Overload => &self.requests_overloaded,
            CrOutcome::CpeGone => &self.requests_cpe_gone,
        });
        self.request_round_trip[outcome as usize].observe(started.elapsed());
    }

    /// A SASL exchange ended (one `<auth/>` attempt).
    pub fn login_done(&self, mechanism: Mechanism, outcome: LoginOutcome, started: Instant) {
        self.login_duration[mechanism_index(mechanism)][outcome as usize]
            .observe(started.elapsed());
    }

    /// A TLS handshake ended (`ok` false: failed or timed out).
    pub fn tls_handshake_done(&self, ok: bool, started: Instant) {
        self.tls_handshake[usize::from(!ok)].observe(started.elapsed());
    }
}

pub const ROLES: [(Role, &str); 3] = [
    (Role::Cpe, "cpe"),
    (Role::AcsAccount, "acs_account"),
    (Role::Component, "component"),
];

pub fn role_index(role: Role) -> usize {
    match role {
        Role::Cpe => 0,
        Role::AcsAccount => 1,
        // Peer nodes are in-process entities, never counted as sessions.
        Role::Component | Role::Node => 2,
    }
}

pub fn mechanism_index(mechanism: Mechanism) -> usize {
    match mechanism {
        Mechanism::Plain => 0,
        Mechanism::ScramSha1 => 1,
        Mechanism::ScramSha256 => 2,
        Mechanism::External => 3,
    }
}

/// Label values of `mechanism`, in `mechanism_index` order.
pub const MECHANISM_LABELS: [&str; 4] = ["PLAIN", "SCRAM-SHA-1", "SCRAM-SHA-256", "EXTERNAL"];

/// How a connection request ended (the `outcome` label; a bounded set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrOutcome {
    CpeResult,
    CpeError,
    Offline,
    Timeout,
    Overload,
    CpeGone,
}

impl CrOutcome {
    pub const ALL: [CrOutcome; 6] = [
        CrOutcome::CpeResult,
        CrOutcome::CpeError,
        CrOutcome::Offline,
        CrOutcome::Timeout,
        CrOutcome::Overload,
        CrOutcome::CpeGone,
    ];

    pub fn label(self) -> &'static str {
        match self {
            CrOutcome::CpeResult => "cpe_result",
            CrOutcome::CpeError => "cpe_error",
            CrOutcome::Offline => "offline",
            CrOutcome::Timeout => "timeout",
            CrOutcome::Overload => "overload",
            CrOutcome::CpeGone => "cpe_gone",
        }
    }
}

/// How one SASL attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginOutcome {
    Ok,
    /// Refused (wrong credentials, unknown user, malformed exchange); delays included.
    Failed,
}

impl LoginOutcome {
    pub const ALL: [LoginOutcome; 2] = [LoginOutcome::Ok, LoginOutcome::Failed];

    pub fn label(self) -> &'static str {
        match self {
            LoginOutcome::Ok => "ok",
            LoginOutcome::Failed => "failed",
        }
    }
}

/// Upper bounds of the histogram buckets in seconds (one set for every histogram here: they all
/// time network round trips, from sub-millisecond on loopback to the 10 s request timeout).
pub const BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
const BUCKETS_US: [u64; BUCKETS.len()] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000, 30_000_000,
];

/// A histogram of durations: one atomic per bucket (not cumulative; the last is +Inf) and the
/// sum in microseconds. Observing is two relaxed atomic adds after a scan of 15 integers: no
/// lock, no allocation. The count is the sum of the buckets, computed at scrape time.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_us: AtomicU64,
}

/// A histogram read at one moment, in the shape the exposition wants.
pub struct HistogramSnapshot {
    pub sum_secs: f64,
    pub count: u64,
    /// (upper bound, observations in that bucket alone) for each finite bound: the encoder
    /// accumulates them itself.
    pub buckets: [(f64, u64); BUCKETS.len()],
}

impl Histogram {
    #[inline]
    pub fn observe(&self, elapsed: Duration) {
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let index = BUCKETS_US
            .iter()
            .position(|&bound| us <= bound)
            .unwrap_or(BUCKETS.len());
        self.buckets[index].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut buckets = [(0.0, 0); BUCKETS.len()];
        let mut count = 0;
        for (i, bound) in BUCKETS.iter().enumerate() {
            let n = self.buckets[i].load(Ordering::Relaxed);
            count += n;
            buckets[i] = (*bound, n);
        }
        HistogramSnapshot {
            sum_secs: self.sum_us.load(Ordering::Relaxed) as f64 / 1e6,
            count: count + self.buckets[BUCKETS.len()].load(Ordering::Relaxed),
            buckets,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_in_microseconds_match_the_seconds() {
        for (s, us) in BUCKETS.iter().zip(BUCKETS_US) {
            assert_eq!((s * 1e6).round() as u64, us);
        }
    }

    #[test]
    fn histogram_counts_into_the_right_buckets() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(400)); // <= 0.0005
        h.observe(Duration::from_millis(3)); // <= 0.005
        h.observe(Duration::from_secs(60)); // +Inf
        let s = h.snapshot();
        assert_eq!(s.count, 3);
        assert_eq!(s.buckets[0], (0.0005, 1));
        assert_eq!(s.buckets[2], (0.0025, 0));
        assert_eq!(s.buckets[3], (0.005, 1));
        assert_eq!(s.buckets[BUCKETS.len() - 1], (30.0, 0));
        assert!((s.sum_secs - 60.0034).abs() < 1e-9);
    }

    #[test]
    fn request_done_counts_and_times_under_its_outcome() {
        let stats = Stats::default();
        stats.request_done(CrOutcome::Timeout, Instant::now());
        assert_eq!(Stats::get(&stats.requests_timed_out), 1);
        assert_eq!(
            stats.request_round_trip[CrOutcome::Timeout as usize]
                .snapshot()
                .count,
            1
        );
        assert_eq!(
            stats.request_round_trip[CrOutcome::CpeResult as usize]
                .snapshot()
                .count,
            0
        );
        let described = stats.described();
        let (_, help, value) = described
            .iter()
            .find(|(n, _, _)| *n == "requests_timed_out")
            .unwrap();
        assert_eq!(*value, 1);
        assert!(help.contains("remote-server-timeout"), "{help}");
        assert!(described.iter().any(
            |(n, h, _)| *n == "connections_accepted" && h.contains("TCP connections accepted")
        ));
    }
}
