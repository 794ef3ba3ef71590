//! The per-session budget for what a CPE sends to ACS entities unprompted.
//!
//! A CPE answers connection requests; it has next to no reason to address an ACS entity
//! otherwise. With one stolen CPE credential an attacker could still send stanzas to the ACS as
//! fast as the socket allows, so every unsolicited stanza from a CPE session to an ACS entity
//! spends from a token bucket (`limits.cpe_to_acs_burst`, refilled at
//! `limits.cpe_to_acs_per_minute`). Answers to pending requests never spend from it.
//!
//! The bucket is the generic cell rate algorithm: one `Instant` (the theoretical arrival time)
//! per session, kept in the session's own task and passed down by `&mut`, so the hot path takes
//! no lock and touches no shared memory.

use std::time::{Duration, Instant};

/// The configured rate, shared by every CPE session.
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    /// Time one token takes to refill.
    interval: Duration,
    /// How far ahead of now the bucket may run: `interval * (burst - 1)`.
    tolerance: Duration,
}

impl Rate {
    /// `burst` stanzas at once, then `per_minute` a minute. Both at least 1 (the config checks).
    pub fn new(burst: u32, per_minute: u32) -> Rate {
        let interval = Duration::from_secs(60) / per_minute.max(1);
        Rate {
            interval,
            tolerance: interval * (burst.max(1) - 1),
        }
    }
}

/// One session's bucket: full until first used.
#[derive(Debug, Default)]
pub struct Bucket {
    /// When the bucket will be full again; None while it is full.
    full_at: Option<Instant>,
}

impl Bucket {
    /// Spend one token at `now` if there is one; false means the stanza is over the rate.
    pub fn take(&mut self, rate: Rate, now: Instant) -> bool {
        let full_at = self.full_at.map_or(now, |t| t.max(now));
        if full_at.saturating_duration_since(now) > rate.tolerance {
            return false;
        }
        self.full_at = Some(full_at + rate.interval);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taken(bucket: &mut Bucket, rate: Rate, now: Instant, tries: usize) -> usize {
        (0..tries).filter(|_| bucket.take(rate, now)).count()
    }

    #[test]
    fn a_full_bucket_allows_the_burst_and_nothing_more() {
        let rate = Rate::new(10, 1);
        let mut bucket = Bucket::default();
        let now = Instant::now();
        assert_eq!(taken(&mut bucket, rate, now, 1000), 10);
    }

    #[test]
    fn tokens_come_back_at_the_rate_and_never_beyond_the_burst() {
        let rate = Rate::new(3, 2); // one token every 30 s
        let mut bucket = Bucket::default();
        let t0 = Instant::now();
        assert_eq!(taken(&mut bucket, rate, t0, 10), 3);
        assert!(!bucket.take(rate, t0 + Duration::from_secs(29)));
        assert!(bucket.take(rate, t0 + Duration::from_secs(30)));
        assert!(!bucket.take(rate, t0 + Duration::from_secs(31)));
        // A long quiet time refills to the burst, not more.
        let later = t0 + Duration::from_secs(3600);
        assert_eq!(taken(&mut bucket, rate, later, 10), 3);
    }

    #[test]
    fn refused_attempts_do_not_spend() {
        // A flood that is refused does not push the next token further away.
        let rate = Rate::new(1, 60); // one a second
        let mut bucket = Bucket::default();
        let t0 = Instant::now();
        assert!(bucket.take(rate, t0));
        assert_eq!(
            taken(&mut bucket, rate, t0 + Duration::from_millis(500), 1000),
            0
        );
        assert!(bucket.take(rate, t0 + Duration::from_secs(1)));
    }

    #[test]
    fn burst_of_one_and_zero_rate_are_safe() {
        let rate = Rate::new(0, 0); // clamped to a burst of 1, one a minute
        let mut bucket = Bucket::default();
        let t0 = Instant::now();
        assert_eq!(taken(&mut bucket, rate, t0, 5), 1);
        assert!(bucket.take(rate, t0 + Duration::from_secs(60)));
    }
}
