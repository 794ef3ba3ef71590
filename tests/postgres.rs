//! The PostgreSQL account store against a real PostgreSQL that each test starts (tests/common/pg.rs):
//! migrations, accounts written through the API and by SQL reaching logins at once, roles from
//! the database, deleted and disabled accounts losing their sessions (pending requests answered),
//! two brokers on one database, polling after a lost notification, bulk import/export with the
//! real binary (the database going away: tests/postgres_outage.rs). Propagation times are
//! printed (`--nocapture`) and bounded by assertions.

mod common;

use common::peers::{self, Transport};
use common::pg::*;
use common::*;
use reqwest::StatusCode;
use serde_json::json;
use std::time::{Duration, Instant};

/// Changes must reach the brokers through NOTIFY well within this; the tests set the polling
/// safety net far above it, so only the notification can explain a pass.
const NOTIFY_BOUND: Duration = Duration::from_secs(2);

#[tokio::test]
async fn migrate_is_idempotent_and_records_its_version() {
    let pg = TestPg::start().await;
    assert_eq!(pg.migrate().await, vec![1]);
    assert_eq!(pg.migrate().await, Vec::<i32>::new());
    let client = pg.client().await;
    let versions: Vec<i32> = column(
        &client,
        "select version from crbroker_schema order by version",
    )
    .await;
    assert_eq!(versions, vec![1]);
    // The database itself refuses a role it does not know and a username logins cannot find.
    for refused in [
        "insert into crbroker_accounts (username, credential, role) values ('x', 'plain:y', 'admin')",
        "insert into crbroker_accounts (username, credential) values ('Upper', 'plain:y')",
        "insert into crbroker_accounts (username, credential) values ('', 'plain:y')",
    ] {
        assert!(client.execute(refused, &[]).await.is_err(), "{refused}");
    }
    assert_eq!(
        pg.sql(
            "insert into crbroker_accounts (username, credential) values ('lower-é', 'plain:y')"
        )
        .await,
        1
    );
}

/// A database `crbroker db migrate` has not prepared: logins get `<temporary-auth-failure/>`
/// (the CPE retries); once migrated, logins work without a restart.
#[tokio::test]
async fn an_unmigrated_database_refuses_logins_temporarily_until_migrated() {
    let pg = TestPg::start().await;
    let broker = broker_on(&pg).await;
    assert_eq!(
        refusal(&broker, "early", "pw").await.as_deref(),
        Some("temporary-auth-failure")
    );
    pg.migrate().await;
    pg.sql("insert into crbroker_accounts (username, credential) values ('early', 'plain:pw')")
        .await;
    try_login(&broker, "early", "pw")
        .await
        .expect("logs in once the schema exists");
    broker.shutdown().await;
}

#[tokio::test]
async fn accounts_put_through_the_api_log_in_at_once_with_plain_and_scram() {
    let (_pg, broker) = migrated().await;

    // Unknown first: the refusal is cached as a negative entry, which the PUT must not outlive.
    assert_eq!(
        refusal(&broker, "pg-plain", "secret-1").await.as_deref(),
        Some("not-authorized")
    );
    let (status, body) = put(&broker, "PG-Plain", json!({"password": "secret-1"})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["username"], "pg-plain");
    assert_eq!(body["role"], "cpe");
    assert_eq!(body["enabled"], true);
    assert_eq!(body["kind"], "scram", "a password is stored hashed");
    assert!(!body.to_string().contains("secret-1"));
    try_login(&broker, "pg-plain", "secret-1")
        .await
        .expect("login right after the PUT");

    // A credential made by `crbroker hash-password`, logged in with SCRAM-SHA-256.
    let line = crbroker::auth::hash_line("pg-scram", "secret-2", 4096);
    let credential = line.split_once(' ').unwrap().1;
    let (status, body) = put(&broker, "pg-scram", json!({"credential": credential})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (_client, jid) = peers::client(
        broker.addr(SCRAM_SHA256_TLS12),
        "pg-scram@example.net/cwmp",
        "secret-2",
        Transport::StartTls,
    )
    .await;
    assert_eq!(jid.to_string(), "pg-scram@example.net/cwmp");

    // Update: 200, the new password works, the old one no longer.
    let (status, _) = put(&broker, "pg-plain", json!({"password": "secret-3"})).await;
    assert_eq!(status, StatusCode::OK);
    try_login(&broker, "pg-plain", "secret-3")
        .await
        .expect("new password");
    assert_eq!(
        refusal(&broker, "pg-plain", "secret-1").await.as_deref(),
        Some("not-authorized")
    );

    // GET, DELETE, then 404 for both.
    let (status, body) = call(&broker, "GET", "pg-plain", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body["updated_at"].as_str().unwrap().ends_with('Z'),
        "{body}"
    );
    assert_eq!(
        call(&broker, "DELETE", "pg-plain", None).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        call(&broker, "GET", "pg-plain", None).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        call(&broker, "DELETE", "pg-plain", None).await.0,
        StatusCode::NOT_FOUND
    );

    // Bad input names the field.
    for (username, body, field) in [
        ("bad@name", json!({"password": "x"}), "username"),
        ("ok", json!({}), "password, credential"),
        (
            "ok",
            json!({"password": "x", "credential": "plain:x"}),
            "password, credential",
        ),
        ("ok", json!({"credential": "md5:abc"}), "credential"),
        ("ok", json!({"password": ""}), "password"),
        ("ok", json!({"password": "x", "role": "admin"}), "role"),
    ] {
        let (status, answer) = call(&broker, "PUT", username, Some(body.clone())).await;
        assert_eq!(status.as_u16() / 100, 4, "{body} -> {status} {answer}");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(field), "{body}: {message}");
    }
    assert_eq!(
        call(&broker, "GET", "ok", None).await.0,
        StatusCode::NOT_FOUND
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn the_role_stored_in_the_database_makes_an_acs_account() {
    let (_pg, broker) = migrated().await;
    for (user, role) in [("pg-acs", "acs"), ("pg-cpe", "cpe")] {
        let (status, _) = put(&broker, user, json!({"password": "pw", "role": role})).await;
        assert_eq!(status, StatusCode::CREATED);
    }
    let (mut cpe, cpe_jid) =
        RawPeer::login(broker.addr(STARTTLS), "pg-cpe", "pw", Some("cwmp")).await;
    let (mut acs, _) = RawPeer::login(broker.addr(STARTTLS), "pg-acs", "pw", Some("acs")).await;
    acs.send(&connection_request("cr1", &cpe_jid, None, "u", "p"))
        .await;
    let request = cpe.element().await;
    assert!(request
        .child("connectionRequest", crbroker::xml::ns::CONN_REQ)
        .is_some());
    let wire_id = request.attr("id").unwrap().to_string();
    cpe.send(&format!(
        "<iq type='result' id='{wire_id}' to='pg-acs@example.net/acs'/>"
    ))
    .await;
    let answer = acs.element().await;
    assert_eq!(
        (answer.attr("id"), answer.attr("type")),
        (Some("cr1"), Some("result"))
    );
    // The API shows the session's role as the database gave it.
    let (_, sessions) = api(&broker, "GET", "/v1/sessions/pg-acs@example.net", None).await;
    assert_eq!(sessions["sessions"][0]["role"], "acs_account", "{sessions}");
    broker.shutdown().await;
}

#[tokio::test]
async fn password_changed_by_sql_applies_within_the_notification_bound() {
    let (pg, broker) = migrated().await;
    pg.sql("insert into crbroker_accounts (username, credential) values ('sql-user', 'plain:old')")
        .await;
    // Cached by this login.
    try_login(&broker, "sql-user", "old")
        .await
        .expect("first login");
    let changed = Instant::now();
    pg.sql("update crbroker_accounts set credential = 'plain:new' where username = 'sql-user'")
        .await;
    login_until(&broker, "sql-user", "new", Ok(())).await;
    let took = changed.elapsed();
    println!("password change by SQL: new password accepted after {took:?}");
    assert!(took < NOTIFY_BOUND, "took {took:?}");
    assert_eq!(
        refusal(&broker, "sql-user", "old").await.as_deref(),
        Some("not-authorized")
    );
    broker.shutdown().await;
}

/// Delete (API and SQL) and disable: the live session is closed with `<not-authorized/>`, its
/// pending request answered once, within the bound; the account no longer logs in.
#[tokio::test]
async fn deleted_or_disabled_accounts_lose_their_sessions_and_pending_requests_are_answered() {
    let (pg, broker) = migrated().await;
    let mut acs = broker.raw_acs().await;
    let ways: [(&str, &str); 3] = [
        ("gone-api", "api"),
        (
            "gone-sql",
            "delete from crbroker_accounts where username = 'gone-sql'",
        ),
        (
            "gone-off",
            "update crbroker_accounts set enabled = false where username = 'gone-off'",
        ),
    ];
    for (i, (user, how)) in ways.into_iter().enumerate() {
        let (status, _) = put(&broker, user, json!({"password": "pw"})).await;
        assert_eq!(status, StatusCode::CREATED);
        let (mut cpe, jid) = RawPeer::login(broker.addr(STARTTLS), user, "pw", Some("cwmp")).await;
        let id = format!("pending-{i}");
        acs.send(&connection_request(
            &id,
            &jid,
            Some(COMPONENT_DOMAIN),
            "u",
            "p",
        ))
        .await;
        cpe.element().await; // delivered, left unanswered
        let started = Instant::now();
        if how == "api" {
            assert_eq!(
                call(&broker, "DELETE", user, None).await.0,
                StatusCode::NO_CONTENT
            );
        } else {
            assert_eq!(pg.sql(how).await, 1);
        }
        cpe.expect_stream_error("not-authorized").await;
        let closed = started.elapsed();
        let answer = acs.element().await;
        assert_eq!(answer.attr("id"), Some(id.as_str()));
        assert_eq!(answer.attr("type"), Some("error"));
        assert_eq!(
            error_condition(&answer).as_deref(),
            Some("service-unavailable")
        );
        println!("{user} ({how}): session closed {closed:?} after the change");
        assert!(closed < NOTIFY_BOUND, "{user}: took {closed:?}");
        assert_eq!(
            refusal(&broker, user, "pw").await.as_deref(),
            Some("not-authorized")
        );
    }
    // Exactly one answer each: the next element the ACS gets answers its own ping.
    acs.send(&format!("<iq type='get' id='after' from='{COMPONENT_DOMAIN}' to='{DOMAIN}'><ping xmlns='urn:xmpp:ping'/></iq>")).await;
    assert_eq!(acs.element().await.attr("id"), Some("after"));
    // Enabled again: logs in again.
    pg.sql("update crbroker_accounts set enabled = true where username = 'gone-off'")
        .await;
    login_until(&broker, "gone-off", "pw", Ok(())).await;
    broker.shutdown().await;
}

/// Every broker on the database applies a change made through another one.
#[tokio::test]
async fn two_brokers_on_one_database_both_apply_a_change() {
    let pg = TestPg::start().await;
    pg.migrate().await;
    let first = broker_on(&pg).await;
    let second = broker_on(&pg).await;
    let (status, _) = put(&first, "roamer", json!({"password": "pw"})).await;
    assert_eq!(status, StatusCode::CREATED);
    let (mut on_first, _) = RawPeer::login(first.addr(STARTTLS), "roamer", "pw", Some("a")).await;
    let (mut on_second, _) = RawPeer::login(second.addr(STARTTLS), "roamer", "pw", Some("b")).await;
    // A new password through the second broker: the first one accepts it at once too.
    let (status, _) = put(&second, "roamer", json!({"password": "pw2"})).await;
    assert_eq!(status, StatusCode::OK);
    let took = login_until(&first, "roamer", "pw2", Ok(())).await;
    println!("password change through the other broker: applied after {took:?}");
    assert!(took < NOTIFY_BOUND);
    let deleted = Instant::now();
    assert_eq!(
        call(&first, "DELETE", "roamer", None).await.0,
        StatusCode::NO_CONTENT
    );
    on_first.expect_stream_error("not-authorized").await;
    on_second.expect_stream_error("not-authorized").await;
    let took = deleted.elapsed();
    println!("delete through one broker: sessions on both closed after {took:?}");
    assert!(took < NOTIFY_BOUND);
    first.shutdown().await;
    second.shutdown().await;
}

/// A change whose transaction commits after a later one (its change number is lower than one
/// the broker has already read) still arrives: the hole in the numbers is read again.
#[tokio::test]
async fn a_change_committed_after_a_later_one_is_not_missed() {
    let (pg, broker) = migrated().await;
    pg.sql("insert into crbroker_accounts (username, credential) values ('slow', 'plain:pw'), ('fast', 'plain:pw')")
        .await;
    let (mut slow, _) = RawPeer::login(broker.addr(STARTTLS), "slow", "pw", Some("cwmp")).await;
    let open = pg.client().await;
    open.batch_execute("begin; delete from crbroker_accounts where username = 'slow'")
        .await
        .unwrap();
    pg.sql("update crbroker_accounts set credential = 'plain:pw2' where username = 'fast'")
        .await;
    // The broker has read the later change...
    login_until(&broker, "fast", "pw2", Ok(())).await;
    // ...and now the earlier one commits.
    let committed = Instant::now();
    open.batch_execute("commit").await.unwrap();
    slow.expect_stream_error("not-authorized").await;
    let took = committed.elapsed();
    println!("change committed out of order: session closed {took:?} after the commit");
    assert!(took < NOTIFY_BOUND, "took {took:?}");
    broker.shutdown().await;
}

/// A change made while notifications are not sent (triggers off, change row written by hand, as
/// if the NOTIFY were lost) still arrives, through the polling safety net.
#[tokio::test]
async fn a_lost_notification_is_made_up_by_polling() {
    let pg = TestPg::start().await;
    pg.migrate().await;
    let broker = TestBroker::start_config(config(
        &pg,
        &TestOptions::default(),
        "poll_interval_secs = 1",
    ))
    .await;
    let client = pg.client().await;
    pg.sql("insert into crbroker_accounts (username, credential) values ('quiet', 'plain:pw')")
        .await;
    let (mut cpe, _) = RawPeer::login(broker.addr(STARTTLS), "quiet", "pw", Some("cwmp")).await;
    let started = Instant::now();
    client
        .batch_execute(
            "begin;
             alter table crbroker_accounts disable trigger user;
             delete from crbroker_accounts where username = 'quiet';
             alter table crbroker_accounts enable trigger user;
             insert into crbroker_account_changes (username) values ('quiet');
             commit;",
        )
        .await
        .unwrap();
    cpe.expect_stream_error("not-authorized").await;
    let took = started.elapsed();
    println!("change without notification: applied by polling after {took:?}");
    assert!(took < Duration::from_secs(3), "took {took:?}");
    broker.shutdown().await;
}

/// `crbroker db migrate`, `db import` (100,000 lines) and `db export` with the real binary.
#[tokio::test]
async fn bulk_import_and_export_with_the_binary() {
    let pg = TestPg::start().await;
    let dir = pki().dir.join(format!("pg-import-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config_path = dir.join("config.toml");
    std::fs::write(
        &config_path,
        format!(
            "[server]\ndomain = \"example.net\"\n[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\nauto_create_dev_cert = true\n\
             [accounts]\nacs = [\"acs-0\"]\n[accounts.postgres]\nurl = \"{}\"\n",
            pg.url()
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_crbroker"))
            .arg("--config")
            .arg(&config_path)
            .arg("db")
            .args(args)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).to_string();
        let stderr = String::from_utf8_lossy(&output.stderr).to_string();
        (output.status.success(), stdout, stderr)
    };
    let (ok, _, stderr) = run(&["import", "missing.txt"]);
    assert!(!ok);
    assert!(stderr.contains("crbroker db migrate"), "{stderr}");
    let (ok, stdout, stderr) = run(&["migrate"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("applied migration 1"), "{stdout}");
    let (ok, stdout, _) = run(&["migrate"]);
    assert!(
        ok && stdout.contains("schema is current (version 1)"),
        "{stdout}"
    );

    const LINES: usize = 100_000;
    let accounts = dir.join("accounts.txt");
    let mut text = String::from("# generated\n");
    for i in 0..LINES {
        text.push_str(&format!("acs-{i} plain:pw-{i}\n"));
    }
    std::fs::write(&accounts, &text).unwrap();
    let (ok, stdout, stderr) = run(&["import", accounts.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    println!("{}", stdout.trim());
    assert!(
        stdout.contains(&format!("imported {LINES} accounts")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("({LINES} rows written)")),
        "{stdout}"
    );
    // Again: nothing changed, nothing written.
    let (ok, stdout, _) = run(&["import", accounts.to_str().unwrap()]);
    assert!(ok && stdout.contains("(0 rows written)"), "{stdout}");
    let client = pg.client().await;
    let count: i64 = client
        .query_one("select count(*) from crbroker_accounts", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count as usize, LINES);
    let roles: Vec<String> = column(
        &client,
        "select role from crbroker_accounts where username in ('acs-0', 'acs-1') order by username",
    )
    .await;
    assert_eq!(roles, ["acs", "cpe"], "accounts.acs names the ACS accounts");

    // A bad line is refused with its line number, nothing written.
    let bad = dir.join("bad.txt");
    std::fs::write(&bad, "fine plain:x\nbroken\n").unwrap();
    let (ok, _, stderr) = run(&["import", bad.to_str().unwrap()]);
    assert!(!ok);
    assert!(stderr.contains("bad.txt:2"), "{stderr}");

    let exported = dir.join("exported.txt");
    let (ok, stdout, stderr) = run(&["export", exported.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains(&format!("exported {LINES} accounts")),
        "{stdout}"
    );
    let back = crbroker::auth::AccountStore::load(&exported).expect("a valid accounts file");
    assert_eq!(back.len(), LINES);
    assert!(back.get("acs-99999").is_some());
    let _ = std::fs::remove_dir_all(&dir);
}
