//! The database schema of the PostgreSQL account store, as numbered migrations that
//! `crbroker db migrate` applies in order, each in its own transaction, recording each in
//! `crbroker_schema`. Applied migrations are never edited: a change is a new migration.

use super::PgError;
use tokio_postgres::Client;

/// The migrations, in order: (version, what it does, SQL).
pub const MIGRATIONS: &[(i32, &str, &str)] = &[(
    1,
    "accounts table, change log and its triggers",
    r#"
create table crbroker_accounts (
    -- Stored as logins look it up: ASCII lower case (the broker folds only ASCII, like the file).
    username text primary key
        check (username !~ '[A-Z]' and octet_length(username) between 1 and 1023),
    -- The accounts file's syntax: plain:PASSWORD or scram:ITERATIONS:SALT:KEYS...
    credential text not null,
    role text not null default 'cpe' check (role in ('cpe', 'acs')),
    enabled boolean not null default true,
    updated_at timestamptz not null default now()
);

-- One row per changed username; brokers read rows after the last one they saw (so a lost
-- notification delays a change, never loses it) and prune rows older than a day.
create table crbroker_account_changes (
    seq bigserial primary key,
    username text not null,
    at timestamptz not null default now()
);

-- Statement-level triggers with transition tables: a bulk import of a million rows appends its
-- change rows in one statement and sends one notification.
create function crbroker_account_changed() returns trigger language plpgsql as $$
begin
    if tg_op = 'INSERT' then
        insert into crbroker_account_changes (username) select username from new_rows;
    elsif tg_op = 'DELETE' then
        insert into crbroker_account_changes (username) select username from old_rows;
    else
        insert into crbroker_account_changes (username)
            select username from new_rows
            union
            select username from old_rows;
    end if;
    perform pg_notify('crbroker_accounts', '');
    return null;
end
$$;

create trigger crbroker_accounts_inserted after insert on crbroker_accounts
    referencing new table as new_rows
    for each statement execute function crbroker_account_changed();
create trigger crbroker_accounts_updated after update on crbroker_accounts
    referencing old table as old_rows new table as new_rows
    for each statement execute function crbroker_account_changed();
create trigger crbroker_accounts_deleted after delete on crbroker_accounts
    referencing old table as old_rows
    for each statement execute function crbroker_account_changed();
"#,
)];

/// Any fixed number: the advisory lock that keeps two `db migrate` runs from racing.
const MIGRATE_LOCK: i64 = 0x6372_6272_6f6b;

/// Apply the migrations the database lacks, in order; returns the versions applied now (empty
/// when the schema was already current).
pub async fn migrate(client: &mut Client) -> Result<Vec<i32>, PgError> {
    client
        .batch_execute(
            "create table if not exists crbroker_schema (
                 version int primary key,
                 applied_at timestamptz not null default now()
             )",
        )
        .await?;
    client
        .execute("select pg_advisory_lock($1)", &[&MIGRATE_LOCK])
        .await?;
    let outcome = apply_missing(client).await;
    let unlocked = client
        .execute("select pg_advisory_unlock($1)", &[&MIGRATE_LOCK])
        .await;
    let applied = outcome?;
    unlocked?;
    Ok(applied)
}

async fn apply_missing(client: &mut Client) -> Result<Vec<i32>, PgError> {
    let mut applied = Vec::new();
    for &(version, _, sql) in MIGRATIONS {
        let transaction = client.transaction().await?;
        let done = transaction
            .query_opt(
                "select 1 from crbroker_schema where version = $1",
                &[&version],
            )
            .await?
            .is_some();
        if done {
            continue;
        }
        transaction.batch_execute(sql).await?;
        transaction
            .execute(
                "insert into crbroker_schema (version) values ($1)",
                &[&version],
            )
            .await?;
        transaction.commit().await?;
        applied.push(version);
    }
    Ok(applied)
}

/// The newest version applied to the database, 0 when none.
pub async fn current_version(client: &Client) -> Result<i32, PgError> {
    let row = client
        .query_one("select coalesce(max(version), 0) from crbroker_schema", &[])
        .await?;
    Ok(row.get(0))
}

/// The version this build expects.
pub fn latest_version() -> i32 {
    MIGRATIONS.last().map(|m| m.0).unwrap_or(0)
}
