//! `crbroker-bench probe`: how long after a cluster node's death its CPEs answer connection
//! requests again. Connects one ACS component (to a node that survived) and probes CPEs
//! `cpe-<first>` ... until each answered `result` once (`Acs::probe`); prints the
//! moment the last one did as unix milliseconds, for `bench/cluster.sh kill` to subtract the kill
//! time from.

use crate::acs::{Acs, AcsArgs, AcsConfig};
use clap::Args;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Args)]
pub struct ProbeArgs {
    /// The ACS: point --component-addr at a node that survived.
    #[command(flatten)]
    acs: AcsArgs,
    #[arg(long, default_value = "cwmp")]
    resource: String,
    /// The connection-request password the CPEs check (crbroker-bench run's).
    #[arg(long, default_value = "cr-secret")]
    cr_password: String,
    /// Account number of the first CPE to probe.
    #[arg(long, default_value_t = 0)]
    first_account: usize,
    /// Number of CPEs to probe.
    #[arg(long, short = 'n')]
    sessions: usize,
    /// Connection requests per second.
    #[arg(long, default_value_t = 4000.0)]
    rate: f64,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 300.0)]
    limit_secs: f64,
    /// An answer not received within this many seconds counts as a timeout (and is retried).
    #[arg(long, default_value_t = 5.0)]
    answer_timeout_secs: f64,
}

pub fn main(args: ProbeArgs) -> ExitCode {
    if !args.acs.component_addr.ip().is_loopback() {
        eprintln!(
            "crbroker-bench: {} is not a loopback address",
            args.acs.component_addr
        );
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("crbroker-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(probe(&args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("crbroker-bench probe: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn probe(args: &ProbeArgs) -> Result<bool, String> {
    let config = AcsConfig {
        addr: args.acs.component_addr,
        component: args.acs.component.clone(),
        secret: args.acs.secret.clone(),
        domain: args.acs.domain.clone(),
        resource: args.resource.clone(),
        cr_password: args.cr_password.clone(),
        timeout: Duration::from_secs_f64(args.answer_timeout_secs),
        seed: 1,
    };
    let cpes: Vec<u32> = (args.first_account..args.first_account + args.sessions)
        .map(|i| i as u32)
        .collect();
    let mut acs = Acs::connect(config, cpes.clone()).await?;
    let start = Instant::now();
    let recovery = acs
        .probe(&cpes, args.rate, Duration::from_secs_f64(args.limit_secs))
        .await?;
    acs.close().await;
    println!(
        "[probe] {} requests sent: {} error answers, {} timeouts, {} of {} CPEs answered",
        recovery.sent,
        recovery.error_answers,
        recovery.timeouts,
        recovery.confirmed,
        recovery.total
    );
    let Some(at) = recovery.all_confirmed_at else {
        println!(
            "[probe] not every CPE answered within {} s",
            args.limit_secs
        );
        return Ok(false);
    };
    let unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
        .saturating_sub(at.elapsed().as_millis());
    println!(
        "[probe] all {} CPEs answered a request {:.2} s after the probe started, at unix ms {unix_ms}",
        recovery.total,
        at.duration_since(start).as_secs_f64()
    );
    Ok(true)
}
