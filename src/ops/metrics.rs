//! Broker-wide counters: lock-free atomics, cheap to bump on the hot path.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        #[derive(Debug, Default)]
        pub struct Stats { $($(#[$doc])* pub $name: AtomicU64,)* }

        impl Stats {
            /// Every counter with its name, for logs and the admin view.
            pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name.load(Ordering::Relaxed)),)*]
            }
        }
    };
}

counters! {
    /// TCP connections accepted on any listener.
    connections_accepted,
    /// TCP connections closed at accept because a cap was reached.
    connections_refused_cap,
    /// Connections currently open (any phase).
    connections_open,
    /// Sessions currently bound (CPEs and ACS accounts) or handshaken (components).
    sessions_online,
    logins_ok,
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
    auth_plain,
    auth_scram_sha1,
    auth_scram_sha256,
    component_handshakes_ok,
    component_handshakes_failed,
    /// Connection requests (IQ get/set from an ACS to a CPE) relayed to a CPE.
    requests_relayed,
    requests_answered_result,
    requests_answered_error,
    requests_offline,
    requests_timed_out,
    requests_overloaded,
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
    stream_errors_sent,
    /// Connections ended by a TLS error: a fatal alert from the peer, or a record or message
    /// rustls refused (it sent its alert). Not counted: a clean close_notify.
    tls_errors,
    /// Connections whose peer closed TLS cleanly with close_notify.
    tls_close_notify,
    sessions_replaced,
    /// Connections closed because a write stalled for the stuck-session grace.
    sessions_stuck_closed,
    /// ACS connections closed because the answers queued for them outgrew
    /// `limits.acs_outbox_answer_bytes` (they stopped reading); their answers count as gone.
    acs_closed_answer_room_full,
}

impl Stats {
    #[inline]
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
