//! `login-timing`: do failed logins take the same time whatever the account is?
//!
//! For each kind of username (unknown, a `plain:` account, a `scram:` (hashed) account) and each
//! mechanism (PLAIN, SCRAM-SHA-1, SCRAM-SHA-256) it makes N failed logins over real TLS and times,
//! on the client, the step that checks the credentials: PLAIN's `<auth>` to `<failure>`, SCRAM's
//! client-final `<response>` to `<failure>` (and, separately, SCRAM's client-first to its
//! challenge). The cases take turns, one attempt each, so that load drifting on the machine hits
//! them all alike. Every answer must be `<not-authorized/>`: a malformed attempt would be timed
//! on a path that checks nothing.
//!
//! SCRAM attempts send a made-up proof with the right nonce and channel binding: the server checks
//! it exactly as a wrong password's proof, and the client needs no PBKDF2 of its own.

use crate::cpe::{self, Stream, Target};
use crate::xml::{self, Framer};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use clap::Args;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Args)]
pub struct LoginTimingArgs {
    /// c2s address (STARTTLS, or direct TLS with --direct-tls). Loopback only.
    #[arg(long, default_value = "127.0.0.1:15222")]
    pub c2s: SocketAddr,
    #[arg(long)]
    pub direct_tls: bool,
    #[arg(long, default_value = "example.net")]
    pub domain: String,
    /// Failed logins per case (9 cases: 3 kinds of username x 3 mechanisms).
    #[arg(long, short = 'n', default_value_t = 200)]
    pub count: usize,
    /// A username with no account.
    #[arg(long, default_value = "nobody-000000")]
    pub unknown_user: String,
    /// A `plain:` account.
    #[arg(long, default_value = "cpe-000000")]
    pub plain_user: String,
    /// A `scram:` account (e.g. appended with `crbroker hash-password`).
    #[arg(long, default_value = "hashed-000000")]
    pub hashed_user: String,
    /// Failed attempts per connection (at most the broker's auth_attempts_per_connection).
    #[arg(long, default_value_t = 3)]
    pub per_connection: u32,
    /// Connect from 127.0.0.1 instead of 127.1.0.1.
    #[arg(long)]
    pub no_spread: bool,
}

/// The `login-timing` subcommand.
pub fn main(args: LoginTimingArgs) -> ExitCode {
    if !args.c2s.ip().is_loopback() {
        eprintln!("crbroker-bench: {} is not a loopback address", args.c2s);
        return ExitCode::from(2);
    }
    if args.count == 0 || args.per_connection == 0 {
        eprintln!("crbroker-bench: --count and --per-connection must be at least 1");
        return ExitCode::from(2);
    }
    let server_name = match rustls::pki_types::ServerName::try_from(args.domain.clone()) {
        Ok(name) => name,
        Err(e) => {
            eprintln!("crbroker-bench: --domain: {e}");
            return ExitCode::from(2);
        }
    };
    let target = Target {
        addr: args.c2s,
        direct_tls: args.direct_tls,
        domain: args.domain.clone(),
        server_name,
        tls: tokio_rustls::TlsConnector::from(crate::tls::insecure_client_config()),
        resource: String::new(),
        passwords: crate::sasl::Passwords::Same(String::new()),
        mechanism: crate::sasl::Mechanism::Plain,
        cr_password: String::new(),
        spread_sources: !args.no_spread,
        devices: None,
        reconnect: Vec::new(),
        reconnect_spread: std::time::Duration::ZERO,
    };
    let users = Users {
        unknown: args.unknown_user,
        plain: args.plain_user,
        hashed: args.hashed_user,
    };
    let plan = Plan {
        count: args.count,
        per_connection: args.per_connection,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("crbroker-bench: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let started = Instant::now();
    match runtime.block_on(run(&target, &users, &plan)) {
        Ok(table) => {
            println!(
                "{} failed logins per case over TLS, {:.0} s",
                args.count,
                started.elapsed().as_secs_f64()
            );
            print!("{table}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("crbroker-bench login-timing: {e}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    Plain,
    ScramSha1,
    ScramSha256,
}

impl Mechanism {
    const ALL: [Mechanism; 3] = [
        Mechanism::Plain,
        Mechanism::ScramSha1,
        Mechanism::ScramSha256,
    ];

    fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::ScramSha1 => "SCRAM-SHA-1",
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
        }
    }

    fn proof_len(self) -> usize {
        match self {
            Mechanism::Plain => 0,
            Mechanism::ScramSha1 => 20,
            Mechanism::ScramSha256 => 32,
        }
    }
}

/// The usernames of the three kinds.
pub struct Users {
    pub unknown: String,
    pub plain: String,
    pub hashed: String,
}

/// One (username kind, mechanism) case and its samples.
struct Case {
    kind: &'static str,
    user: String,
    mechanism: Mechanism,
    /// Credential check to failure answer.
    failure: Vec<Duration>,
    /// SCRAM client-first to challenge.
    challenge: Vec<Duration>,
    /// `s=` length (decoded) and `i=` of the last challenge.
    params: Option<(usize, u32)>,
    conn: Option<(Stream, Framer)>,
    attempts_on_conn: u32,
}

/// Failed logins per case, attempts per connection (keep it at or below the broker's
/// `auth_attempts_per_connection`).
pub struct Plan {
    pub count: usize,
    pub per_connection: u32,
}

pub async fn run(target: &Target, users: &Users, plan: &Plan) -> Result<String, String> {
    let mut cases = Vec::new();
    for (kind, user) in [
        ("unknown", &users.unknown),
        ("plaintext", &users.plain),
        ("hashed", &users.hashed),
    ] {
        for mechanism in Mechanism::ALL {
            cases.push(Case {
                kind,
                user: user.clone(),
                mechanism,
                failure: Vec::with_capacity(plan.count),
                challenge: Vec::with_capacity(plan.count),
                params: None,
                conn: None,
                attempts_on_conn: 0,
            });
        }
    }
    let mut nonce = 0u64;
    for round in 0..plan.count {
        for case in &mut cases {
            nonce += 1;
            attempt(target, case, plan, nonce).await.map_err(|e| {
                format!("{} {} round {round}: {e}", case.kind, case.mechanism.name())
            })?;
        }
    }
    Ok(table(&cases))
}

async fn attempt(target: &Target, case: &mut Case, plan: &Plan, nonce: u64) -> Result<(), String> {
    if case.conn.is_none() || case.attempts_on_conn >= plan.per_connection {
        let (mut stream, mut framer) = cpe::connect_tls(target, 0).await?;
        let features = cpe::open_stream(&mut stream, &mut framer, &target.domain, "sasl").await?;
        if !features.contains(&format!(">{}<", case.mechanism.name())) {
            return Err(format!("{} not offered: {features}", case.mechanism.name()));
        }
        case.conn = Some((stream, framer));
        case.attempts_on_conn = 0;
    }
    let Some((stream, framer)) = case.conn.as_mut() else {
        return Err("no connection".into());
    };
    case.attempts_on_conn += 1;
    let mech = case.mechanism.name();
    let answer = if case.mechanism == Mechanism::Plain {
        let token = STANDARD.encode(format!("\0{}\0not-the-password-{nonce}", case.user));
        let started = Instant::now();
        cpe::send(
            stream,
            &format!(
                "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='{mech}'>{token}</auth>"
            ),
        )
        .await?;
        let answer = cpe::next_element(stream, framer, "auth").await?;
        case.failure.push(started.elapsed());
        answer
    } else {
        let client_nonce = format!("lt{nonce:016x}");
        let first_bare = format!("n={},r={client_nonce}", case.user);
        let started = Instant::now();
        cpe::send(
            stream,
            &format!(
                "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='{mech}'>{}</auth>",
                STANDARD.encode(format!("n,,{first_bare}"))
            ),
        )
        .await?;
        let challenge = cpe::next_element(stream, framer, "client-first").await?;
        case.challenge.push(started.elapsed());
        if xml::name(&challenge) != "challenge" {
            return Err(format!("expected a challenge, got {challenge}"));
        }
        let server_first = text_of(&challenge)
            .and_then(|t| STANDARD.decode(t).ok())
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| format!("bad challenge {challenge}"))?;
        let mut server_nonce = None;
        for attr in server_first.split(',') {
            if let Some(v) = attr.strip_prefix("r=") {
                server_nonce = Some(v.to_owned());
            } else if let Some(v) = attr.strip_prefix("s=") {
                let salt_len = STANDARD.decode(v).map(|s| s.len()).unwrap_or(0);
                case.params = Some((salt_len, case.params.map_or(0, |p| p.1)));
            } else if let Some(v) = attr.strip_prefix("i=") {
                let iterations = v.parse().unwrap_or(0);
                case.params = Some((case.params.map_or(0, |p| p.0), iterations));
            }
        }
        let server_nonce = server_nonce.ok_or_else(|| format!("no nonce in {server_first}"))?;
        // A proof of the right length that is not the password's: nonce-derived bytes.
        let proof: Vec<u8> = (0..case.mechanism.proof_len())
            .map(|i| (nonce.rotate_left(i as u32 * 8) as u8) ^ (i as u8))
            .collect();
        let final_msg = format!("c=biws,r={server_nonce},p={}", STANDARD.encode(proof));
        let started = Instant::now();
        cpe::send(
            stream,
            &format!(
                "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</response>",
                STANDARD.encode(final_msg)
            ),
        )
        .await?;
        let answer = cpe::next_element(stream, framer, "client-final").await?;
        case.failure.push(started.elapsed());
        answer
    };
    if xml::name(&answer) != "failure" || !answer.contains("<not-authorized") {
        return Err(format!("expected <failure><not-authorized/>, got {answer}"));
    }
    if case.attempts_on_conn >= plan.per_connection {
        // The broker may end the stream after its last allowed failure: start afresh.
        case.conn = None;
    }
    Ok(())
}

/// The text between the first `>` and the last `</`.
fn text_of(element: &str) -> Option<&str> {
    let start = element.find('>')? + 1;
    let end = element.rfind("</")?;
    element.get(start..end)
}

fn percentile(samples: &[Duration], p: f64) -> f64 {
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    if ms.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (ms.len() - 1) as f64).round() as usize;
    ms[rank.min(ms.len() - 1)]
}

fn table(cases: &[Case]) -> String {
    let mut out = String::new();
    out.push_str(
        "| mechanism | username | n | failure median ms | p90 ms | median / unknown | p90 / unknown | challenge median ms | salt bytes, i= |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    for mechanism in Mechanism::ALL {
        let of = |kind: &str| {
            cases
                .iter()
                .find(|c| c.mechanism == mechanism && c.kind == kind)
        };
        let Some(unknown) = of("unknown") else {
            continue;
        };
        let (base_median, base_p90) = (
            percentile(&unknown.failure, 50.0),
            percentile(&unknown.failure, 90.0),
        );
        for kind in ["unknown", "plaintext", "hashed"] {
            let Some(c) = of(kind) else { continue };
            let (median, p90) = (percentile(&c.failure, 50.0), percentile(&c.failure, 90.0));
            let challenge = if c.challenge.is_empty() {
                "-".to_string()
            } else {
                format!("{:.2}", percentile(&c.challenge, 50.0))
            };
            let params = c
                .params
                .map_or("-".to_string(), |(s, i)| format!("{s}, {i}"));
            out.push_str(&format!(
                "| {} | {kind} | {} | {median:.2} | {p90:.2} | {:.2} | {:.2} | {challenge} | {params} |\n",
                mechanism.name(),
                c.failure.len(),
                median / base_median,
                p90 / base_p90,
            ));
        }
    }
    out
}
