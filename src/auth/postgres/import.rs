//! `crbroker db import` and `db export`: move accounts between an accounts file (the format of
//! `accounts.file`) and the database, in either direction, so a fleet can move to the
//! PostgreSQL store and back.
//!
//! Import checks the whole file first (the same rules and line-numbered errors as the accounts
//! file), then upserts it in one transaction, [`BATCH`] rows per statement (`unnest` of two
//! arrays: one round trip per batch, no per-row statement). Rows whose credential did not change
//! are left alone, so re-importing the same file touches nothing and wakes no broker.

use super::PgError;
use crate::auth::{AccountStore, AuthError};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio_postgres::Client;

/// Rows per insert statement.
const BATCH: usize = 10_000;

/// What an import did.
#[derive(Debug)]
pub struct ImportReport {
    /// Accounts in the file.
    pub lines: usize,
    /// Rows created or whose credential (or role) changed.
    pub written: u64,
    pub elapsed: Duration,
}

/// Import the accounts file `path` into the database. Usernames in `acs` get the role `acs`,
/// the others `cpe`; accounts only in the database are kept.
pub async fn import_file(
    client: &mut Client,
    path: &Path,
    acs: &[String],
) -> Result<ImportReport, PgError> {
    let started = Instant::now();
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| {
        PgError::Import(
            AuthError::Io {
                path: origin.clone(),
                source,
            }
            .to_string(),
        )
    })?;
    // The same checks as the broker's own accounts file: line-numbered errors, no duplicates.
    let checked =
        AccountStore::parse(&text, &origin).map_err(|e| PgError::Import(e.to_string()))?;
    let lines = checked.len();
    drop(checked);
    let acs: Vec<String> = acs.iter().map(|u| u.to_ascii_lowercase()).collect();
    let transaction = client.transaction().await?;
    let statement = transaction
        .prepare(
            "insert into crbroker_accounts (username, credential, role)
             select * from unnest($1::text[], $2::text[], $3::text[])
             on conflict (username) do update set
                 credential = excluded.credential, role = excluded.role, updated_at = now()
             where crbroker_accounts.credential <> excluded.credential
                or crbroker_accounts.role <> excluded.role",
        )
        .await?;
    let mut written = 0;
    let mut usernames = Vec::with_capacity(BATCH);
    let mut credentials = Vec::with_capacity(BATCH);
    let mut roles = Vec::with_capacity(BATCH);
    let mut entries = AccountStore::lines(&text).peekable();
    while entries.peek().is_some() {
        usernames.clear();
        credentials.clear();
        roles.clear();
        for (username, credential) in entries.by_ref().take(BATCH) {
            let username = username.to_ascii_lowercase();
            roles.push(if acs.contains(&username) {
                "acs"
            } else {
                "cpe"
            });
            usernames.push(username);
            credentials.push(credential);
        }
        written += transaction
            .execute(&statement, &[&usernames, &credentials, &roles])
            .await?;
    }
    transaction.commit().await?;
    Ok(ImportReport {
        lines,
        written,
        elapsed: started.elapsed(),
    })
}

/// Write every enabled account of the database to `path` as an accounts file; returns how many.
pub async fn export_file(client: &Client, path: &Path) -> Result<usize, PgError> {
    let file = std::fs::File::create(path)
        .map_err(|e| PgError::Import(format!("cannot create {}: {e}", path.display())))?;
    let mut out = std::io::BufWriter::new(file);
    let write_error = |e: std::io::Error| PgError::Import(format!("{}: {e}", path.display()));
    writeln!(out, "# exported from crbroker_accounts (enabled accounts)").map_err(write_error)?;
    let statement = client
        .prepare(
            "select username, credential from crbroker_accounts
             where enabled and username > $1 order by username limit $2",
        )
        .await?;
    let mut after = String::new();
    let mut count = 0;
    loop {
        let rows = client.query(&statement, &[&after, &(BATCH as i64)]).await?;
        for row in &rows {
            let (username, credential): (&str, &str) = (row.get(0), row.get(1));
            writeln!(out, "{username} {credential}").map_err(write_error)?;
        }
        count += rows.len();
        match rows.last() {
            Some(last) if rows.len() == BATCH => after = last.get::<_, String>(0),
            _ => break,
        }
    }
    out.flush().map_err(write_error)?;
    Ok(count)
}
