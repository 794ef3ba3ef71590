//! `crbroker db migrate|import|export`: the PostgreSQL account store's schema and bulk moves
//! between an accounts file and the database, on `[accounts.postgres]` of the configuration.

use clap::Subcommand;
use crbroker::auth::postgres::{self, PgError};
use crbroker::config::Config;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum DbCommand {
    /// Create or upgrade the schema (idempotent); prints the versions applied.
    Migrate,
    /// Upsert every account of an accounts file (usernames in accounts.acs get the role acs).
    Import { file: PathBuf },
    /// Write the enabled accounts of the database as an accounts file.
    Export { file: PathBuf },
}

pub fn run(command: DbCommand, config: Result<Config, String>) -> ExitCode {
    let outcome = config.and_then(|config| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the runtime: {e}"))?;
        runtime
            .block_on(execute(command, &config))
            .map_err(|e| e.to_string())
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("crbroker db: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn execute(command: DbCommand, config: &Config) -> Result<(), PgError> {
    let pg_config = postgres::connection_config(config)?;
    let mut client = postgres::connect(&pg_config).await?;
    match command {
        DbCommand::Migrate => {
            let applied = postgres::migrate(&mut client).await?;
            let version = postgres::current_version(&client).await?;
            if applied.is_empty() {
                println!("schema is current (version {version})");
            }
            for version in applied {
                let what = postgres::MIGRATIONS
                    .iter()
                    .find(|m| m.0 == version)
                    .map_or("", |m| m.1);
                println!("applied migration {version}: {what}");
            }
        }
        DbCommand::Import { file } => {
            check_schema(&client).await?;
            let path = config.resolve(&file);
            let report = postgres::import_file(&mut client, &path, &config.accounts.acs).await?;
            println!(
                "imported {} accounts from {} ({} rows written) in {:.1} s",
                report.lines,
                path.display(),
                report.written,
                report.elapsed.as_secs_f64()
            );
        }
        DbCommand::Export { file } => {
            check_schema(&client).await?;
            let count = postgres::export_file(&client, &file).await?;
            println!("exported {count} accounts to {}", file.display());
        }
    }
    Ok(())
}

async fn check_schema(client: &tokio_postgres::Client) -> Result<(), PgError> {
    let found = postgres::current_version(client).await.unwrap_or(0);
    let needed = postgres::latest_version();
    if found < needed {
        return Err(PgError::Schema { found, needed });
    }
    Ok(())
}
