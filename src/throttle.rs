//! Failed-login throttling per account (never per IP: thousands of CPEs share one carrier-NAT
//! address). After `max_failures` within `window`, the account is locked for `lockout`; a locked
//! account's logins fail with the ordinary `<not-authorized/>`, so an attacker learns nothing.

use dashmap::DashMap;
use std::time::{Duration, Instant};

pub struct LoginThrottle {
    max_failures: u32,
    window: Duration,
    lockout: Duration,
    accounts: DashMap<String, FailureRecord>,
}

#[derive(Clone, Copy)]
struct FailureRecord {
    window_start: Instant,
    failures: u32,
    locked_until: Option<Instant>,
}

impl LoginThrottle {
    pub fn new(max_failures: u32, window: Duration, lockout: Duration) -> LoginThrottle {
        LoginThrottle {
            max_failures,
            window,
            lockout,
            accounts: DashMap::new(),
        }
    }

    /// Whether logins for `username` are refused right now.
    pub fn is_locked(&self, username: &str, now: Instant) -> bool {
        if self.max_failures == 0 {
            return false;
        }
        match self.accounts.get(username) {
            Some(record) => record.locked_until.is_some_and(|until| now < until),
            None => false,
        }
    }

    /// Count a failed login.
    pub fn record_failure(&self, username: &str, now: Instant) {
        if self.max_failures == 0 {
            return;
        }
        // Bound the map: forget stale records when it grows large (attackers try many names).
        if self.accounts.len() > 100_000 {
            self.accounts.retain(|_, r| {
                r.locked_until.is_some_and(|u| now < u)
                    || now.duration_since(r.window_start) < self.window
            });
        }
        let mut record = self
            .accounts
            .entry(username.to_string())
            .or_insert(FailureRecord {
                window_start: now,
                failures: 0,
                locked_until: None,
            });
        if record.locked_until.is_some_and(|until| now >= until)
            || now.duration_since(record.window_start) > self.window
        {
            *record = FailureRecord {
                window_start: now,
                failures: 0,
                locked_until: None,
            };
        }
        record.failures += 1;
        if record.failures >= self.max_failures {
            record.locked_until = Some(now + self.lockout);
        }
    }

    /// A successful login clears the account's record.
    pub fn record_success(&self, username: &str) {
        if !self.accounts.is_empty() {
            self.accounts.remove(username);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_after_k_failures_and_unlocks_after_lockout() {
        let throttle = LoginThrottle::new(3, Duration::from_secs(60), Duration::from_secs(300));
        let t0 = Instant::now();
        for _ in 0..2 {
            throttle.record_failure("cpe", t0);
        }
        assert!(!throttle.is_locked("cpe", t0));
        throttle.record_failure("cpe", t0);
        assert!(throttle.is_locked("cpe", t0));
        assert!(!throttle.is_locked("other", t0));
        assert!(!throttle.is_locked("cpe", t0 + Duration::from_secs(301)));
    }
}
