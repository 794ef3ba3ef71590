//! The recovery probe (`crbroker-bench probe`, used by `bench/cluster.sh kill`): after a cluster
//! node is killed, send connection requests to each of its CPEs, over and over, until every one
//! has answered `result` again (through whichever node it logged in again on).
//!
//! Requests go out at a fixed rate, one CPE at a time from a queue of those not yet confirmed; a
//! CPE whose request was answered with an error or timed out goes to the back of the queue. So a
//! CPE is asked again at most (queue length / rate) seconds after its last answer: that is the
//! resolution of the figure, and it shrinks as CPEs are confirmed.

use super::{Acs, Tally};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// What the probe saw.
pub struct Recovery {
    pub total: usize,
    pub confirmed: usize,
    /// When the last CPE was confirmed (None: not all were).
    pub all_confirmed_at: Option<Instant>,
    pub sent: u64,
    pub error_answers: u64,
    pub timeouts: u64,
}

impl Acs {
    /// Probe `cpes` at `rate` requests per second until each answered `result` once, or for at
    /// most `limit`. Prints progress every second.
    pub async fn probe(
        &mut self,
        cpes: &[u32],
        rate: f64,
        limit: Duration,
    ) -> Result<Recovery, String> {
        self.tracker.completions = Some(Vec::new());
        let start = Instant::now();
        let mut waiting: VecDeque<u32> = cpes.iter().copied().collect();
        let mut tally = Tally::default();
        let mut buf = vec![0u8; 64 * 1024];
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        // At most 10 ms worth of requests in one burst.
        let burst = (rate / 100.0).max(1.0);
        let mut tokens = 0.0;
        let mut refilled = start;
        let mut next_report = start + Duration::from_secs(1);
        let mut recovery = Recovery {
            total: cpes.len(),
            confirmed: 0,
            all_confirmed_at: None,
            sent: 0,
            error_answers: 0,
            timeouts: 0,
        };
        while recovery.confirmed < cpes.len() {
            tokio::select! {
                biased;
                _ = tick.tick() => {
                    let now = Instant::now();
                    tokens = (tokens + rate * now.duration_since(refilled).as_secs_f64()).min(burst);
                    refilled = now;
                    let mut batch = Vec::new();
                    while tokens >= 1.0 {
                        let Some(cpe) = waiting.pop_front() else { break };
                        self.add_request_to(&mut batch, cpe, now, &mut tally);
                        tokens -= 1.0;
                    }
                    if !batch.is_empty() {
                        self.send(batch)?;
                    }
                    self.tracker.sweep(now, &mut tally, false);
                    if now >= next_report {
                        eprintln!(
                            "[probe] +{:.0} s: {} of {} CPEs answered a request",
                            now.duration_since(start).as_secs_f64(),
                            recovery.confirmed,
                            cpes.len()
                        );
                        next_report += Duration::from_secs(1);
                    }
                    if now.duration_since(start) > limit {
                        break;
                    }
                }
                read = self.read_some(&mut buf, &mut tally) => { read?; }
            }
            let now = Instant::now();
            let completions = self.tracker.completions.get_or_insert_with(Vec::new);
            for (cpe, ok) in completions.drain(..) {
                if ok {
                    recovery.confirmed += 1;
                } else {
                    waiting.push_back(cpe);
                }
            }
            if recovery.confirmed == cpes.len() {
                recovery.all_confirmed_at = Some(now);
            }
        }
        recovery.sent = tally.sent;
        recovery.error_answers = tally.errors.values().sum();
        recovery.timeouts = tally.timeouts;
        Ok(recovery)
    }
}
