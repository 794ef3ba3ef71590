//! `crbroker-bench`: load and benchmark tool for crbroker (and, for comparison, Prosody and
//! ejabberd). See bench/README.md.
//!
//! Traffic goes only to loopback addresses (127.0.0.0/8): the tool refuses any other target.
//! Every phase is bounded in count and time and the tool stops by itself.

mod acs;
mod cpe;
mod devices;
mod genconfig;
mod logintiming;
mod preauth;
mod procstat;
mod recovery;
mod report;
mod sasl;
mod scrape;
mod tls;
mod xml;

use clap::{Args, Parser, Subcommand};
use report::{LoginPhase, Report};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch, Semaphore};

#[derive(Parser)]
#[command(
    name = "crbroker-bench",
    version,
    about = "Load/benchmark tool for crbroker: logins, idle memory, connection-request relay"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write broker configs and accounts (crbroker, Prosody, ejabberd) for N CPEs.
    GenConfig(GenConfigArgs),
    /// Log in N CPEs, measure, send connection requests, close everything, report.
    Run(Box<RunArgs>),
    /// Hold N unauthenticated connections at one stage of a login; report broker RSS per connection.
    PreAuthMemory(PreAuthMemoryArgs),
    /// Time failed logins per kind of username and mechanism (unknown, plaintext, hashed account).
    LoginTiming(logintiming::LoginTimingArgs),
    /// After a cluster node was killed: send connection requests to its CPEs (through a node
    /// that survived) until each answered again; print when the last one did.
    Probe(recovery::ProbeArgs),
    /// Print a side-by-side table of JSON reports (ratios against the first).
    Table {
        /// JSON report files written by `run --json-out` (the first is the baseline).
        files: Vec<PathBuf>,
    },
}

#[derive(Args)]
struct GenConfigArgs {
    /// Output directory (created).
    #[arg(long)]
    out: PathBuf,
    /// Number of CPE accounts: cpe-000000 ... cpe-(N-1).
    #[arg(long, short = 'n', default_value_t = 19_000)]
    sessions: usize,
    #[arg(long, default_value = "example.net")]
    domain: String,
    #[arg(long, default_value = "acs.example.net")]
    component: String,
    #[arg(long, default_value = "bench-component-secret")]
    secret: String,
    /// Password of every CPE account.
    #[arg(long, default_value = "pw")]
    password: String,
    /// crbroker: derived credentials instead of an accounts file: two random secrets
    /// (crbroker/derived-current.key, crbroker/derived-previous.key, both accepted: a rotation
    /// in progress) for usernames starting with `cpe-`.
    #[arg(long)]
    derived: bool,
    #[arg(long, default_value_t = 15222)]
    c2s_port: u16,
    #[arg(long, default_value_t = 15223)]
    direct_tls_port: u16,
    /// crbroker's direct-TLS listener that requires device certificates (SASL EXTERNAL).
    #[arg(long, default_value_t = 15224)]
    external_port: u16,
    #[arg(long, default_value_t = 15347)]
    component_port: u16,
}

#[derive(Args)]
struct PreAuthMemoryArgs {
    /// Listener to connect to: direct TLS for `record`, STARTTLS for `proceed`. Loopback only.
    #[arg(long)]
    addr: SocketAddr,
    /// Connections to hold.
    #[arg(long, short = 'n', default_value_t = 1000)]
    connections: usize,
    #[arg(long, value_enum, default_value = "record")]
    stage: preauth::Stage,
    /// `record` stage: the body length the TLS record header announces.
    #[arg(long, default_value_t = 16)]
    announce: u16,
    #[arg(long, default_value = "example.net")]
    domain: String,
    #[arg(long)]
    broker_pid: u32,
    /// Seconds to wait before each RSS sample.
    #[arg(long, default_value_t = 1.0)]
    settle_secs: f64,
    /// Start each connection with a PROXY v1 header (a listener with `proxy_protocol = true`);
    /// not in the `connected` stage, where the connection waits for it.
    #[arg(long)]
    proxy_header: bool,
}

#[derive(Args)]
struct RunArgs {
    /// Name of the server under test, used in the report.
    #[arg(long, default_value = "crbroker")]
    label: String,
    /// Number of CPE sessions to open (accounts cpe-000000 ...).
    #[arg(long, short = 'n', default_value_t = 1000)]
    sessions: usize,
    /// Logins in progress at once.
    #[arg(long, short = 'c', default_value_t = 100)]
    concurrency: usize,
    /// c2s address (STARTTLS, or direct TLS with --direct-tls). Loopback only.
    #[arg(long, default_value = "127.0.0.1:15222")]
    c2s: SocketAddr,
    /// Connect with TLS from the first byte (XEP-0368) instead of STARTTLS.
    #[arg(long)]
    direct_tls: bool,
    #[command(flatten)]
    acs: acs::AcsArgs,
    /// Password of every CPE account.
    #[arg(long, default_value = "pw")]
    password: String,
    /// Derive each CPE's password from this secret file instead (crbroker's
    /// `[accounts.derived]`; `gen-config --derived` writes crbroker/derived-current.key).
    #[arg(long)]
    derived_secret: Option<PathBuf>,
    /// SASL mechanism of the CPEs.
    #[arg(long, value_enum, default_value = "plain")]
    mechanism: sasl::Mechanism,
    #[arg(long, default_value = "cwmp")]
    resource: String,
    /// Do not bind client sockets to spread 127.x.y.z source addresses.
    #[arg(long)]
    no_spread: bool,
    /// SASL EXTERNAL: every CPE presents its own certificate signed by this device CA key
    /// (gen-config's device-ca-key.pem) and logs in with EXTERNAL; point --c2s at the broker's
    /// external listener (gen-config: 127.0.0.1:15224, with --direct-tls).
    #[arg(long)]
    device_ca_key: Option<PathBuf>,
    /// PID of the broker, for RSS (VmRSS) and CPU (utime+stime) figures.
    #[arg(long)]
    broker_pid: Option<u32>,
    /// More processes whose CPU counts as the broker's (repeatable): the other nodes of a
    /// cluster and nats-server, so "broker CPU per CR" covers the whole cluster.
    #[arg(long)]
    cpu_pid: Vec<u32>,
    /// Where a CPE logs in again when the server ends its session (a cluster's other nodes, as
    /// behind a load balancer; repeatable: CPE i goes to the (i mod count)-th); the moment all
    /// lost sessions are back is printed. Loopback only.
    #[arg(long)]
    reconnect_to: Vec<SocketAddr>,
    /// A lost CPE waits a random time up to this many milliseconds before it logs in again
    /// (0: at once); failed attempts back off from 250 ms to 8 s, with jitter.
    #[arg(long, default_value_t = 0)]
    reconnect_spread_ms: u64,
    /// Account number of the first CPE (cpe-<first> ...): disjoint accounts for several tool
    /// processes at once.
    #[arg(long, default_value_t = 0)]
    first_account: usize,
    /// Seconds to let the sessions idle before the memory figure.
    #[arg(long, default_value_t = 3.0)]
    settle_secs: f64,
    /// Longest one login may take before it counts as failed.
    #[arg(long, default_value_t = 30.0)]
    login_timeout_secs: f64,
    /// Open loop: connection requests per second (0 skips the phase).
    #[arg(long, default_value_t = 2000.0)]
    rate: f64,
    /// Open loop: seconds of sending.
    #[arg(long, default_value_t = 10.0)]
    open_secs: f64,
    /// Closed loop: requests kept in flight (0 skips the phase).
    #[arg(long, default_value_t = 64)]
    in_flight: usize,
    /// Closed loop: seconds of sending.
    #[arg(long, default_value_t = 10.0)]
    closed_secs: f64,
    /// An answer not received within this many seconds counts as a timeout.
    #[arg(long, default_value_t = 5.0)]
    answer_timeout_secs: f64,
    /// Seed of the random choice of target CPEs.
    #[arg(long, default_value_t = 0x5eed)]
    seed: u64,
    /// Write the JSON report to this file too.
    #[arg(long)]
    json_out: Option<PathBuf>,
    /// Tokio worker threads of the tool (default: number of cores).
    #[arg(long)]
    threads: Option<usize>,
    /// The broker's ops listener: after the idle phase, GET /metrics `--scrapes` times and
    /// report the broker CPU per scrape. Loopback only.
    #[arg(long)]
    scrape: Option<SocketAddr>,
    #[arg(long, default_value_t = 200)]
    scrapes: usize,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::GenConfig(args) => gen_config(args),
        Command::Run(args) => run(*args),
        Command::PreAuthMemory(args) => pre_auth_memory(args),
        Command::LoginTiming(args) => logintiming::main(args),
        Command::Probe(args) => recovery::main(args),
        Command::Table { files } => table(&files),
    }
}

fn pre_auth_memory(a: PreAuthMemoryArgs) -> ExitCode {
    if !a.addr.ip().is_loopback() {
        eprintln!("crbroker-bench: {} is not a loopback address", a.addr);
        return ExitCode::from(2);
    }
    procstat::raise_nofile_limit();
    let args = preauth::PreAuthArgs {
        addr: a.addr,
        connections: a.connections,
        stage: a.stage,
        announce: a.announce,
        domain: a.domain,
        broker_pid: a.broker_pid,
        settle: Duration::from_secs_f64(a.settle_secs),
        proxy_header: a.proxy_header,
    };
    let (stage, announce, proxy_header) = (args.stage, args.announce, args.proxy_header);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(preauth::run(args)) {
        Ok(result) => {
            let what = match stage {
                preauth::Stage::Record => {
                    format!("TLS record header announcing {announce} bytes + 1 byte")
                }
                preauth::Stage::Proceed => "held after <proceed/>, no TLS byte".to_string(),
                preauth::Stage::Connected => "held after the TCP connect, no byte".to_string(),
            };
            let what = match proxy_header && stage != preauth::Stage::Connected {
                true => format!("PROXY v1 header, then {what}"),
                false => what,
            };
            println!(
                "pre-auth memory: {} connections ({what}): broker RSS {} -> {} KiB, {:.2} KiB per connection",
                result.held,
                result.rss_before_kib,
                result.rss_held_kib,
                result.kib_per_connection()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("crbroker-bench pre-auth-memory: {e}");
            ExitCode::FAILURE
        }
    }
}

fn gen_config(a: GenConfigArgs) -> ExitCode {
    let started = Instant::now();
    let config = genconfig::GenConfig {
        out: a.out.clone(),
        sessions: a.sessions,
        domain: a.domain,
        component: a.component,
        secret: a.secret,
        password: a.password,
        derived: a.derived,
        c2s_port: a.c2s_port,
        direct_tls_port: a.direct_tls_port,
        external_port: a.external_port,
        component_port: a.component_port,
    };
    match config.write_all() {
        Ok(()) => {
            println!(
                "wrote configs and {} accounts for crbroker, prosody, ejabberd under {} in {:.1} s",
                a.sessions,
                a.out.display(),
                started.elapsed().as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("crbroker-bench gen-config: {e}");
            ExitCode::from(2)
        }
    }
}

fn table(files: &[PathBuf]) -> ExitCode {
    let mut reports = Vec::new();
    for file in files {
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("crbroker-bench table: {}: {e}", file.display());
                return ExitCode::from(2);
            }
        };
        let parsed = text
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str::<Report>(l.trim()).ok());
        match parsed {
            Some(r) => reports.push(r),
            None => {
                eprintln!("crbroker-bench table: {}: no JSON report", file.display());
                return ExitCode::from(2);
            }
        }
    }
    if reports.is_empty() {
        eprintln!("crbroker-bench table: no report files given");
        return ExitCode::from(2);
    }
    print!("{}", report::comparison(&reports));
    ExitCode::SUCCESS
}

fn run(args: RunArgs) -> ExitCode {
    cpe::set_first_account(args.first_account);
    procstat::set_extra_cpu_pids(args.cpu_pid.clone());
    for addr in [args.c2s, args.acs.component_addr]
        .into_iter()
        .chain(args.scrape)
        .chain(args.reconnect_to.iter().copied())
    {
        if !addr.ip().is_loopback() {
            eprintln!("crbroker-bench: {addr} is not a loopback address; this tool only loads 127.0.0.0/8 and ::1");
            return ExitCode::from(2);
        }
    }
    if args.sessions == 0 || args.concurrency == 0 {
        eprintln!("crbroker-bench: --sessions and --concurrency must be at least 1");
        return ExitCode::from(2);
    }
    let limit = procstat::raise_nofile_limit();
    let needed = args.sessions as u64 + 64;
    if limit < needed {
        eprintln!(
            "crbroker-bench: {} sessions need about {needed} open files, the limit is {limit}: \
             raise it (ulimit -n) or lower --sessions",
            args.sessions
        );
        return ExitCode::from(2);
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(threads) = args.threads {
        builder.worker_threads(threads.max(1));
    }
    let runtime = match builder.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("crbroker-bench: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let report = runtime.block_on(bench(&args));
    // Sessions are closed; do not wait for stragglers on the way out.
    runtime.shutdown_timeout(Duration::from_secs(1));
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            eprintln!("crbroker-bench: {e}");
            println!("RESULT: FAILED ({e})");
            return ExitCode::FAILURE;
        }
    };
    print!("{}", report.human());
    let json = serde_json::to_string(&report).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
    println!("{json}");
    if let Some(path) = &args.json_out {
        if let Err(e) = std::fs::write(path, format!("{json}\n")) {
            eprintln!("crbroker-bench: {}: {e}", path.display());
        }
    }
    if report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn per_unit(total: Option<f64>, units: u64, scale: f64) -> Option<f64> {
    (units > 0).then_some(total? * scale / units as f64)
}

async fn bench(args: &RunArgs) -> Result<Report, String> {
    let pid = args.broker_pid;
    if let Some(p) = pid {
        if procstat::rss_kib(procstat::Pid::Other(p)).is_none() {
            return Err(format!("no process {p} to measure (--broker-pid)"));
        }
    }
    let server_name = rustls::pki_types::ServerName::try_from(args.acs.domain.clone())
        .map_err(|e| format!("--domain: {e}"))?;
    let passwords = match &args.derived_secret {
        Some(path) => sasl::Passwords::derived_from_file(path)?,
        None => sasl::Passwords::Same(args.password.clone()),
    };
    let devices = match &args.device_ca_key {
        Some(path) => Some(Arc::new(devices::DeviceCa::load(path)?)),
        None => None,
    };
    let target_at = |addr, reconnect| cpe::Target {
        addr,
        direct_tls: args.direct_tls,
        domain: args.acs.domain.clone(),
        server_name: server_name.clone(),
        tls: tokio_rustls::TlsConnector::from(tls::insecure_client_config()),
        resource: args.resource.clone(),
        passwords: passwords.clone(),
        mechanism: args.mechanism,
        cr_password: "cr-secret".into(),
        spread_sources: !args.no_spread,
        devices: devices.clone(),
        reconnect,
        reconnect_spread: Duration::from_millis(args.reconnect_spread_ms),
    };
    let fallback = args
        .reconnect_to
        .iter()
        .map(|&addr| Arc::new(target_at(addr, Vec::new())))
        .collect();
    let target = Arc::new(target_at(args.c2s, fallback));
    let counters = Arc::new(cpe::CpeCounters::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut report = Report {
        label: args.label.clone(),
        sessions: args.sessions,
        concurrency: args.concurrency,
        transport: match (args.direct_tls, args.device_ca_key.is_some()) {
            (true, false) => "direct TLS".into(),
            (true, true) => "direct TLS, EXTERNAL".into(),
            (false, false) => "STARTTLS".into(),
            (false, true) => "STARTTLS, EXTERNAL".into(),
        },
        broker_pid: pid,
        load_average_at_start: procstat::load_average(),
        ..Default::default()
    };

    // Phase 1: logins.
    report.idle.broker_rss_before_kib =
        pid.and_then(|p| procstat::rss_kib(procstat::Pid::Other(p)));
    eprintln!(
        "[{}] logging in {} CPEs (concurrency {})...",
        args.label, args.sessions, args.concurrency
    );
    let cpu = procstat::CpuMark::now(pid);
    let started = Instant::now();
    let permits = Arc::new(Semaphore::new(args.concurrency));
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(usize, Result<Duration, String>)>();
    let login_timeout = Duration::from_secs_f64(args.login_timeout_secs);
    let mut tasks = Vec::with_capacity(args.sessions);
    for index in 0..args.sessions {
        let permits = permits.clone();
        let target = target.clone();
        let counters = counters.clone();
        let done = done_tx.clone();
        let stop = stop_rx.clone();
        tasks.push(tokio::spawn(async move {
            let Ok(permit) = permits.acquire_owned().await else {
                return;
            };
            let t0 = Instant::now();
            let outcome = tokio::time::timeout(login_timeout, cpe::login(&target, index)).await;
            drop(permit);
            let session = match outcome {
                Ok(Ok(session)) => {
                    let _ = done.send((index, Ok(t0.elapsed())));
                    session
                }
                Ok(Err(e)) => {
                    let _ = done.send((index, Err(e)));
                    return;
                }
                Err(_) => {
                    let _ = done.send((index, Err("login timed out".into())));
                    return;
                }
            };
            drop(done);
            cpe::serve(session, index, target, counters, stop).await;
        }));
    }
    drop(done_tx);
    let mut latencies = Vec::with_capacity(args.sessions);
    let mut online = Vec::with_capacity(args.sessions);
    let mut login = LoginPhase {
        attempted: args.sessions,
        ..Default::default()
    };
    let mut last_login = started;
    let mut next_progress = started + Duration::from_secs(5);
    while let Some((index, outcome)) = done_rx.recv().await {
        match outcome {
            Ok(latency) => {
                latencies.push(latency.as_micros().min(u32::MAX as u128) as u32);
                online.push(index as u32);
                last_login = Instant::now();
            }
            Err(e) => {
                login.failed += 1;
                if login.failure_samples.len() < 5 {
                    login
                        .failure_samples
                        .push(format!("{}: {e}", cpe::username(index)));
                }
            }
        }
        if Instant::now() >= next_progress {
            eprintln!(
                "[{}]   {} online, {} failed after {:.1} s",
                args.label,
                online.len(),
                login.failed,
                started.elapsed().as_secs_f64()
            );
            next_progress += Duration::from_secs(5);
        }
    }
    login.ok = online.len();
    login.secs = last_login.duration_since(started).as_secs_f64();
    login.rate_per_s = if login.secs > 0.0 {
        login.ok as f64 / login.secs
    } else {
        0.0
    };
    login.latency = report::summarize(latencies);
    login.cpu = cpu.since(pid);
    login.broker_cpu_per_login_ms = per_unit(login.cpu.broker_s, login.ok as u64, 1e3);
    login.tool_cpu_per_login_ms = per_unit(login.cpu.tool_s, login.ok as u64, 1e3);
    report.login = login;
    eprintln!(
        "[{}] {} online in {:.2} s; idling {:.0} s",
        args.label, report.login.ok, report.login.secs, args.settle_secs
    );

    // Phase 2: idle sessions.
    let cpu = procstat::CpuMark::now(pid);
    tokio::time::sleep(Duration::from_secs_f64(args.settle_secs)).await;
    report.idle.settle_secs = args.settle_secs;
    report.idle.broker_cpu_idle_s = cpu.since(pid).broker_s;
    report.idle.broker_rss_idle_kib = pid.and_then(|p| procstat::rss_kib(procstat::Pid::Other(p)));
    report.idle.tool_rss_kib = procstat::rss_kib(procstat::Pid::This);
    if let (Some(before), Some(idle)) = (
        report.idle.broker_rss_before_kib,
        report.idle.broker_rss_idle_kib,
    ) {
        if !online.is_empty() {
            report.idle.broker_rss_per_session_bytes =
                Some((idle as f64 - before as f64) * 1024.0 / online.len() as f64);
        }
    }

    // Phase 2b: scrapes of /metrics with the sessions online.
    if let Some(addr) = args.scrape {
        eprintln!("[{}] GET /metrics x {}", args.label, args.scrapes);
        report.scrape = Some(scrape::run(addr, args.scrapes, pid).await?);
    }

    // Phase 3: connection requests.
    let run_crs = !online.is_empty()
        && ((args.rate > 0.0 && args.open_secs > 0.0)
            || (args.in_flight > 0 && args.closed_secs > 0.0));
    if run_crs {
        let mut acs = acs::Acs::connect(
            acs::AcsConfig {
                addr: args.acs.component_addr,
                component: args.acs.component.clone(),
                secret: args.acs.secret.clone(),
                domain: args.acs.domain.clone(),
                resource: args.resource.clone(),
                cr_password: target.cr_password.clone(),
                timeout: Duration::from_secs_f64(args.answer_timeout_secs),
                seed: args.seed,
            },
            online.clone(),
        )
        .await?;
        if args.rate > 0.0 && args.open_secs > 0.0 {
            eprintln!(
                "[{}] open loop: {} CR/s for {} s",
                args.label, args.rate, args.open_secs
            );
            let cpu = procstat::CpuMark::now(pid);
            let mut phase = acs.open_loop(args.rate, args.open_secs).await?;
            phase.cpu = cpu.since(pid);
            let answered = phase.answered_ok + phase.answered_error;
            phase.broker_cpu_per_cr_us = per_unit(phase.cpu.broker_s, answered, 1e6);
            phase.tool_cpu_per_cr_us = per_unit(phase.cpu.tool_s, answered, 1e6);
            let stop_early = phase.error.is_some();
            report.open_loop = Some(phase);
            if stop_early {
                return finish(report, tasks, stop_tx, &counters, pid).await;
            }
        }
        if args.in_flight > 0 && args.closed_secs > 0.0 {
            eprintln!(
                "[{}] closed loop: {} in flight for {} s",
                args.label, args.in_flight, args.closed_secs
            );
            let cpu = procstat::CpuMark::now(pid);
            let mut phase = acs.closed_loop(args.in_flight, args.closed_secs).await?;
            phase.cpu = cpu.since(pid);
            let answered = phase.answered_ok + phase.answered_error;
            phase.broker_cpu_per_cr_us = per_unit(phase.cpu.broker_s, answered, 1e6);
            phase.tool_cpu_per_cr_us = per_unit(phase.cpu.tool_s, answered, 1e6);
            report.closed_loop = Some(phase);
        }
        acs.close().await;
    }
    finish(report, tasks, stop_tx, &counters, pid).await
}

/// Close every session (bounded), take the last figures, judge the run.
async fn finish(
    mut report: Report,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    stop: watch::Sender<bool>,
    counters: &cpe::CpeCounters,
    pid: Option<u32>,
) -> Result<Report, String> {
    // Count what happened to sessions before the tool asked them to close.
    report.sessions_lost = counters.lost.load(Ordering::Relaxed);
    report.sessions_lost_samples = counters
        .lost_samples
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    report.crs_received_by_cpes = counters.crs_received.load(Ordering::Relaxed);
    report.crs_with_bad_credentials = counters.crs_bad_credentials.load(Ordering::Relaxed);
    report.teardown.broker_rss_before_close_kib =
        pid.and_then(|p| procstat::rss_kib(procstat::Pid::Other(p)));
    eprintln!("[{}] closing sessions", report.label);
    let started = Instant::now();
    let _ = stop.send(true);
    let all = futures_join(tasks);
    if tokio::time::timeout(Duration::from_secs(30), all)
        .await
        .is_err()
    {
        eprintln!("[{}] some sessions did not close within 30 s", report.label);
    }
    report.teardown.secs = started.elapsed().as_secs_f64();
    report.teardown.closed_cleanly = counters.closed_cleanly.load(Ordering::Relaxed);
    report.teardown.closed_uncleanly = counters.closed_uncleanly.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(2)).await;
    report.teardown.broker_rss_after_close_kib =
        pid.and_then(|p| procstat::rss_kib(procstat::Pid::Other(p)));
    report.judge();
    Ok(report)
}

/// Wait for every task (their results do not matter: each reports through the counters).
async fn futures_join(tasks: Vec<tokio::task::JoinHandle<()>>) {
    for task in tasks {
        let _ = task.await;
    }
}
