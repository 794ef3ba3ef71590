//! What every SASL login does around its mechanism, whichever it is: wait out the login delay
//! once the username is known (src/throttle.rs), and count the outcome (the throttle's failure
//! tables, the login-duration histogram, the per-mechanism success counters).

use crate::context::Context;
use crate::ops::metrics::{LoginOutcome, Stats};
use crate::proto::sasl::{Mechanism, Step};
use crate::throttle::Wait;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// Wait out the delay that recent failures of `username` or of `ip` impose (counted in
/// `logins_delayed`); the returned wait is what the outcome is counted against.
pub(super) async fn login_delay(username: &str, ip: IpAddr, ctx: &Context) -> Wait {
    let wait = ctx.throttle.wait(username, ip, Instant::now());
    if !wait.delay.is_zero() {
        Stats::bump(&ctx.stats.logins_delayed);
        let ms = u64::try_from(wait.delay.as_millis()).unwrap_or(u64::MAX);
        ctx.stats
            .login_delay_ms_total
            .fetch_add(ms, Ordering::Relaxed);
        tokio::time::sleep(wait.delay).await;
    }
    wait
}

/// Count a finished attempt (`step` is a success or a failure). `wait` is the delay to count
/// the outcome against: `None` when no username was tried, or the failure was not the
/// client's (a source that could not answer).
pub(super) fn record_outcome(
    step: &Step,
    wait: Option<&Wait>,
    mechanism: Mechanism,
    started: Instant,
    ctx: &Context,
) {
    let success = matches!(step, Step::Success { .. });
    match wait {
        Some(wait) if success => ctx.throttle.record_success(wait),
        Some(wait) => {
            let dropped = ctx.throttle.record_failure(wait, Instant::now());
            ctx.stats
                .login_failure_generations_dropped
                .fetch_add(dropped, Ordering::Relaxed);
        }
        None => {}
    }
    let outcome = if success {
        LoginOutcome::Ok
    } else {
        LoginOutcome::Failed
    };
    ctx.stats.login_done(mechanism, outcome, started);
    if success {
        Stats::bump(match mechanism {
            Mechanism::Plain => &ctx.stats.auth_plain,
            Mechanism::ScramSha1 => &ctx.stats.auth_scram_sha1,
            Mechanism::ScramSha256 => &ctx.stats.auth_scram_sha256,
            Mechanism::External => &ctx.stats.auth_external,
        });
    }
}
