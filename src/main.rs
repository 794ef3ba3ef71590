//! The `crbroker` command: run the broker, check a config, hash a password or print a derived
//! one; the support-staff commands that talk to a running broker's API, and the `db` commands of
//! the PostgreSQL account store, live in `cli/`.

mod cli;

use clap::{Parser, Subcommand};
use crbroker::config::{Config, LogConfig, LogFormat, DEFAULT_CONFIG};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "crbroker",
    version,
    about = "XMPP connection-request broker for TR-069 Annex K"
)]
struct Cli {
    /// Configuration file. Default: ./config.toml, or the embedded default when there is none.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker (the default).
    Run,
    /// Check a configuration file (and the accounts file it names) without starting.
    CheckConfig { file: PathBuf },
    /// Print an accounts-file line with the password stored as SCRAM keys (no plaintext).
    HashPassword {
        username: String,
        /// The password; read from standard input when omitted.
        password: Option<String>,
        #[arg(long, default_value_t = 4096)]
        iterations: u32,
    },
    /// Print the derived password of USER (`[accounts.derived]` of the configuration: the
    /// first secret, or the one named by --secret-id): what the ACS provisions on that CPE.
    DerivePassword {
        username: String,
        /// Use this secret instead of the current (first) one.
        #[arg(long)]
        secret_id: Option<String>,
    },
    /// The PostgreSQL account store: schema and bulk import/export ([accounts.postgres]).
    Db {
        #[command(subcommand)]
        command: cli::db::DbCommand,
    },
    #[command(flatten)]
    Api(cli::ApiCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run) {
        Command::CheckConfig { file } => check_config(&file),
        Command::HashPassword {
            username,
            password,
            iterations,
        } => hash_password(&username, password, iterations),
        Command::DerivePassword {
            username,
            secret_id,
        } => derive_password(cli.config, &username, secret_id.as_deref()),
        Command::Run => run(cli.config),
        Command::Db { command } => cli::db::run(command, load_config(cli.config)),
        Command::Api(command) => cli::run(command, cli.config),
    }
}

fn load_config(path: Option<PathBuf>) -> Result<Config, String> {
    match path {
        Some(path) => Config::load(&path).map_err(|e| e.to_string()),
        None if std::path::Path::new("config.toml").exists() => {
            Config::load(std::path::Path::new("config.toml")).map_err(|e| e.to_string())
        }
        None => Config::parse(DEFAULT_CONFIG, "<embedded config.toml>", PathBuf::from("."))
            .map_err(|e| e.to_string()),
    }
}

/// Logging from `[log]`; `RUST_LOG`, when set, wins over `log.level`. Logs go to stdout.
fn init_tracing(log: &LogConfig) -> Result<(), String> {
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) => EnvFilter::try_new(&directives).map_err(|e| format!("RUST_LOG: {e}"))?,
        Err(_) => EnvFilter::try_new(log.level.get_ref()).map_err(|e| format!("log.level: {e}"))?,
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match log.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

fn run(config_path: Option<PathBuf>) -> ExitCode {
    let config = match load_config(config_path) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("crbroker: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = init_tracing(&config.log) {
        eprintln!("crbroker: {e}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("crbroker: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(crbroker::run(config, shutdown_signal()));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("crbroker: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The first SIGTERM/SIGINT starts a graceful shutdown; a second one exits at once.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        eprintln!("crbroker: cannot install signal handlers");
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        eprintln!("crbroker: second signal, exiting now");
        std::process::exit(1);
    });
}

fn check_config(file: &std::path::Path) -> ExitCode {
    let config = match Config::load(file) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("crbroker: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(accounts) = &config.accounts.file {
        if let Err(e) = crbroker::auth::AccountStore::load(&config.resolve(accounts.get_ref())) {
            eprintln!("crbroker: {e}");
            return ExitCode::from(2);
        }
    }
    if let Err(e) = crbroker::account_sources::load_derived(&config) {
        eprintln!("crbroker: {}: {e}", file.display());
        return ExitCode::from(2);
    }
    println!("{}: ok", file.display());
    ExitCode::SUCCESS
}

fn hash_password(username: &str, password: Option<String>, iterations: u32) -> ExitCode {
    if let Err(problem) = crbroker::auth::normalize_username(username) {
        eprintln!("crbroker: username {username:?}: {problem}");
        return ExitCode::from(2);
    }
    if !(crbroker::auth::MIN_ITERATIONS..=crbroker::auth::MAX_ITERATIONS).contains(&iterations) {
        eprintln!(
            "crbroker: --iterations must be {}..={}",
            crbroker::auth::MIN_ITERATIONS,
            crbroker::auth::MAX_ITERATIONS
        );
        return ExitCode::from(2);
    }
    let password = match password {
        Some(p) => p,
        None => {
            let mut line = String::new();
            if std::io::stdin().read_line(&mut line).is_err() {
                eprintln!("crbroker: cannot read the password from standard input");
                return ExitCode::FAILURE;
            }
            line.trim_end_matches(['\r', '\n']).to_string()
        }
    };
    println!(
        "{}",
        crbroker::auth::hash_line(username, &password, iterations)
    );
    ExitCode::SUCCESS
}

fn derive_password(
    config_path: Option<PathBuf>,
    username: &str,
    secret_id: Option<&str>,
) -> ExitCode {
    let fail = |message: String| {
        eprintln!("crbroker: {message}");
        ExitCode::from(2)
    };
    let config = match load_config(config_path) {
        Ok(config) => config,
        Err(e) => return fail(e),
    };
    let derived = match crbroker::account_sources::load_derived(&config) {
        Ok(Some(derived)) => derived,
        Ok(None) => return fail(format!("{}: no [accounts.derived] section", config.origin)),
        Err(e) => return fail(format!("{}: {e}", config.origin)),
    };
    let username = match crbroker::auth::normalize_username(username) {
        Ok(name) => name,
        Err(problem) => return fail(format!("username {username:?}: {problem}")),
    };
    if !derived.qualifies(&username) {
        return fail(format!(
            "{username:?} starts with none of accounts.derived.username_prefixes: \
             it is not a derived account"
        ));
    }
    let secret = match secret_id {
        None => derived.secrets().first(),
        Some(id) => derived.secrets().iter().find(|s| s.id() == id),
    };
    match secret {
        Some(secret) => {
            println!("{}", secret.password(&username));
            ExitCode::SUCCESS
        }
        None => fail(format!(
            "no secret with id {:?} in [accounts.derived] (ids: {})",
            secret_id.unwrap_or_default(),
            derived
                .secrets()
                .iter()
                .map(|s| s.id())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}
