//! The change feed: one task per broker that keeps the cache of the PostgreSQL store current and
//! closes the sessions of accounts that were deleted or disabled.
//!
//! The database's triggers append every changed username to `crbroker_account_changes` and send
//! a notification on the channel `crbroker_accounts`. The feed holds its own connection (not a
//! pooled one) that LISTENs, and reads the rows after the last one it saw on each notification,
//! every `poll_interval_secs` (should a notification be lost), and after each reconnect: a
//! change is delayed by an outage, never lost.
//!
//! Sequence numbers are taken when a transaction inserts and become visible when it commits, so
//! a row may show up after rows with higher numbers. A hole in the numbers is remembered and read
//! again for [`GAP_WAIT`] (a rolled back insert leaves a hole for good).

use super::{Cached, PgError, PostgresSource};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio_postgres::{AsyncMessage, Client, NoTls};

/// What the change feed needs from the sessions of this broker (the router implements it; auth
/// does not know sessions).
pub trait AccountSessions: Send + Sync {
    /// Whether `username` (normalised) has a bound session on this broker.
    fn has_sessions(&self, username: &str) -> bool;
    /// Close every session of `username` with the stream error `<not-authorized/>` (their
    /// pending requests are answered as for any session that ends); returns how many.
    fn close_account(&self, username: &str) -> usize;
}

/// How long a hole in the change numbers is read again (a transaction still open).
const GAP_WAIT: Duration = Duration::from_secs(60);
/// Holes wider than this come from a rolled back bulk statement, not from open transactions.
const MAX_GAP: i64 = 1000;
/// Change rows read per query.
const PAGE: i64 = 10_000;
/// Change rows older than this are deleted (by any broker, about once an hour).
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// Longest wait between two connection attempts while the database is unreachable.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Where the feed has read up to.
#[derive(Default)]
struct Cursor {
    /// Highest change number handled; None before the first connection.
    max_seen: Option<i64>,
    /// Numbers below `max_seen` not seen yet, with when they were first missed.
    gaps: BTreeMap<i64, Instant>,
}

pub(super) async fn run(
    source: Arc<PostgresSource>,
    sessions: Arc<dyn AccountSessions>,
    mut stop: watch::Receiver<bool>,
) {
    let mut cursor = Cursor::default();
    let mut backoff = Duration::from_millis(100);
    let mut pruned_at: Option<Instant> = None;
    loop {
        let outcome = tokio::select! {
            outcome = follow(&source, sessions.as_ref(), &mut cursor, &mut pruned_at, &mut backoff) => outcome,
            _ = crate::context::stopped(&mut stop) => return,
        };
        if let Err(error) = outcome {
            source.warn_unavailable(&error);
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = crate::context::stopped(&mut stop) => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One connection's life: LISTEN, catch up, then read on every notification or tick. Returns
/// when the connection fails.
async fn follow(
    source: &PostgresSource,
    sessions: &dyn AccountSessions,
    cursor: &mut Cursor,
    pruned_at: &mut Option<Instant>,
    backoff: &mut Duration,
) -> Result<(), PgError> {
    let (client, mut notified) = listen(source).await?;
    let timeout = source.query_timeout;
    within(timeout, catch_up(source, &client, cursor)).await?;
    tracing::info!("account change feed connected");
    *backoff = Duration::from_millis(100);
    let mut tick = tokio::time::interval(source.poll_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        within(timeout, read_changes(source, sessions, &client, cursor)).await?;
        source.mark_contact();
        if pruned_at.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
            *pruned_at = Some(Instant::now());
            within(timeout, prune(&client)).await?;
        }
        tokio::select! {
            message = notified.recv() => if message.is_none() {
                return Err(PgError::FeedClosed);
            },
            _ = tick.tick() => {}
        }
    }
}

/// `work`, or a timeout error after `timeout`.
async fn within<T>(
    timeout: Duration,
    work: impl std::future::Future<Output = Result<T, PgError>>,
) -> Result<T, PgError> {
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or(Err(PgError::Timeout(timeout)))
}

/// A dedicated connection that LISTENs, and a channel that gets one message per notification
/// (bounded, 1: a notification while a read is already due adds nothing; it closes when the
/// connection does).
async fn listen(source: &PostgresSource) -> Result<(Client, mpsc::Receiver<()>), PgError> {
    let (client, mut connection) = source.pg_config.connect(NoTls).await?;
    let (notify, notified) = mpsc::channel(1);
    tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(_))) => {
                    let _ = notify.try_send(());
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::debug!("change feed connection: {e}");
                    return;
                }
                None => return,
            }
        }
    });
    client.batch_execute("listen crbroker_accounts").await?;
    Ok((client, notified))
}

/// At the first connection start after the newest change; at a reconnect, if changes were
/// pruned before this broker read them, forget the whole cache (it may be stale).
async fn catch_up(
    source: &PostgresSource,
    client: &Client,
    cursor: &mut Cursor,
) -> Result<(), PgError> {
    // A database that `crbroker db migrate` has not prepared: say so (logins get
    // temporary-auth-failure meanwhile), rather than failing on a missing table at each login.
    let (found, needed) = (
        super::current_version(client).await.unwrap_or(0),
        super::latest_version(),
    );
    if found < needed {
        return Err(PgError::Schema { found, needed });
    }
    let row = client
        .query_one(
            "select coalesce(min(seq), 0), coalesce(max(seq), 0) from crbroker_account_changes",
            &[],
        )
        .await?;
    let (oldest, newest): (i64, i64) = (row.get(0), row.get(1));
    match cursor.max_seen {
        None => {
            // Everything before now is in the database already: the cache starts empty.
            cursor.max_seen = Some(newest);
        }
        Some(seen) if oldest > seen + 1 => {
            tracing::warn!(
                "account changes after {seen} were pruned before this broker read them: cache cleared"
            );
            source
                .epoch
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            source.cache.invalidate_all();
            cursor.gaps.clear();
            cursor.max_seen = Some(newest);
        }
        Some(_) => {}
    }
    Ok(())
}

/// Read the changes after the cursor (and the holes still open), forget those usernames, and
/// close the sessions of the ones now deleted or disabled.
async fn read_changes(
    source: &PostgresSource,
    sessions: &dyn AccountSessions,
    client: &Client,
    cursor: &mut Cursor,
) -> Result<(), PgError> {
    let mut changed: HashSet<String> = HashSet::new();
    if !cursor.gaps.is_empty() {
        // The holes by number (at most MAX_GAP of them per jump), not every row after the first.
        let gaps: Vec<i64> = cursor.gaps.keys().copied().collect();
        let rows = client
            .query(
                "select seq, username from crbroker_account_changes where seq = any($1)",
                &[&gaps],
            )
            .await?;
        for row in &rows {
            if cursor.take(row.get(0)) {
                changed.insert(row.get(1));
            }
        }
    }
    let mut from = cursor.max_seen.unwrap_or(0);
    loop {
        let rows = client
            .query(
                "select seq, username from crbroker_account_changes
                 where seq > $1 order by seq limit $2",
                &[&from, &PAGE],
            )
            .await?;
        for row in &rows {
            let seq: i64 = row.get(0);
            from = seq;
            if cursor.take(seq) {
                changed.insert(row.get(1));
            }
        }
        if (rows.len() as i64) < PAGE {
            break;
        }
    }
    cursor.gaps.retain(|_, missed| missed.elapsed() < GAP_WAIT);
    if changed.is_empty() {
        return Ok(());
    }
    apply(source, sessions, client, changed).await
}

impl Cursor {
    /// Record `seq` as read: it fills a hole, or moves the cursor (opening holes for the
    /// numbers skipped). False when an earlier read already handled it.
    fn take(&mut self, seq: i64) -> bool {
        if self.gaps.remove(&seq).is_some() {
            return true;
        }
        let max_seen = self.max_seen.unwrap_or(0);
        if seq <= max_seen {
            return false;
        }
        if seq - max_seen <= MAX_GAP {
            let now = Instant::now();
            for missing in max_seen + 1..seq {
                self.gaps.insert(missing, now);
            }
        }
        self.max_seen = Some(seq);
        true
    }
}

/// Forget `changed` in the cache; for those this broker cares about (cached or with sessions),
/// read their rows and close the sessions of the deleted or disabled ones.
async fn apply(
    source: &PostgresSource,
    sessions: &dyn AccountSessions,
    client: &Client,
    changed: HashSet<String>,
) -> Result<(), PgError> {
    source
        .epoch
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let mut watched = Vec::new();
    for username in changed {
        let cached = source.cache.contains_key(username.as_str());
        source.cache.invalidate(username.as_str());
        if cached || sessions.has_sessions(&username) {
            watched.push(username);
        }
    }
    if watched.is_empty() {
        return Ok(());
    }
    let rows = client
        .query(
            "select username from crbroker_accounts where username = any($1) and enabled",
            &[&watched],
        )
        .await?;
    let live: HashSet<&str> = rows.iter().map(|row| row.get(0)).collect();
    let mut closed = 0;
    for username in watched.iter().filter(|u| !live.contains(u.as_str())) {
        // Remembered as gone, so a login that resolved just before and binds now closes itself.
        source.cache.insert(
            username.as_str().into(),
            Cached::Unknown {
                since: Instant::now(),
            },
        );
        closed += sessions.close_account(username);
    }
    if closed > 0 {
        tracing::info!(
            sessions = closed,
            "closed the sessions of accounts deleted or disabled in the database"
        );
    }
    Ok(())
}

/// Delete change rows older than a day (every broker has read them long since).
async fn prune(client: &Client) -> Result<(), PgError> {
    client
        .execute(
            "delete from crbroker_account_changes where at < now() - interval '1 day'",
            &[],
        )
        .await?;
    Ok(())
}
