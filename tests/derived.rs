//! Derived credentials (`[accounts.derived]`, src/auth/derived.rs): logins over PLAIN and
//! SCRAM-SHA-256 with the password computed from a secret, wrong passwords and non-qualifying
//! usernames refused, a secret rotation through reloads, and `crbroker derive-password` checked
//! against an independent HMAC, the documented `openssl` one-liner and the GenieACS extension
//! run with `node`.

mod common;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use common::peers::{self, Transport};
use common::*;
use hmac::{Hmac, Mac};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The secrets of the tests: hex text, as `openssl rand -hex 32` writes it (with its newline).
const NEW_SECRET: &str = "9f2c4e7a1b3d5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8";
const OLD_SECRET: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// The documented function, computed here with hmac/sha2/base64 directly.
fn expected_password(secret: &str, username: &str) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(username.to_ascii_lowercase().as_bytes());
    URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
}

/// One test's directory: the secret files and the configuration file.
struct Files {
    dir: PathBuf,
    config: PathBuf,
}

impl Files {
    fn new(name: &str) -> Files {
        let dir = pki().dir.join(format!("derived-{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        for (file, secret) in [("new.key", NEW_SECRET), ("old.key", OLD_SECRET)] {
            let path = dir.join(file);
            std::fs::write(&path, format!("{secret}\n")).unwrap();
            set_owner_only(&path);
        }
        let config = dir.join("crbroker.toml");
        Files { dir, config }
    }

    /// Write the test configuration with `[accounts.derived]` naming `secrets` (file stems, the
    /// current one first), relative to the configuration file.
    fn write_config(&self, secrets: &[&str]) {
        let secrets = secrets
            .iter()
            .map(|id| format!("{{ id = \"{id}\", file = \"{id}.key\" }}"))
            .collect::<Vec<_>>()
            .join(", ");
        let text = format!(
            "{}\n[accounts.derived]\nsecrets = [{secrets}]\nusername_prefixes = [\"dev-\", \"cpe-\"]\ncache_entries = 1000\n",
            config_text(&TestOptions::default())
        );
        std::fs::write(&self.config, text).unwrap();
    }

    async fn broker(&self, secrets: &[&str]) -> TestBroker {
        self.write_config(secrets);
        TestBroker::start_file(&self.config).await
    }
}

fn set_owner_only(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

async fn plain(broker: &TestBroker, user: &str, password: &str) -> Result<(), String> {
    let mut peer = RawPeer::tcp(broker.addr(STARTTLS)).await.starttls().await;
    peer.auth_plain(user, password).await.map(|_| ())
}

/// A PLAIN login that the broker refuses with `<not-authorized/>`.
async fn refused(broker: &TestBroker, user: &str, password: &str) {
    assert_eq!(
        plain(broker, user, password).await,
        Err("not-authorized".into()),
        "{user} logged in"
    );
}

async fn reload(broker: &TestBroker) -> crbroker::reload::ReloadChanges {
    let report = broker.broker.as_ref().unwrap().reload().await;
    report.outcome.expect("reload applies")
}

#[tokio::test]
async fn plain_login_with_the_derived_password() {
    let files = Files::new("plain");
    let broker = files.broker(&["new"]).await;
    let password = expected_password(NEW_SECRET, "dev-0001");
    assert_eq!(password.len(), 43);

    let (mut peer, jid) =
        RawPeer::login(broker.addr(STARTTLS), "dev-0001", &password, Some("cwmp")).await;
    assert_eq!(jid, "dev-0001@example.net/cwmp");
    peer.send("<iq type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    assert_eq!(peer.element().await.attr("type"), Some("result"));
    // Usernames are case-insensitive: the same password.
    plain(&broker, "DEV-0001", &password).await.unwrap();

    refused(
        &broker,
        "dev-0001",
        &expected_password(NEW_SECRET, "dev-0002"),
    )
    .await;
    refused(&broker, "dev-0001", &password[..42]).await;
    // A username without a derived prefix is no derived account.
    refused(
        &broker,
        "lab-0001",
        &expected_password(NEW_SECRET, "lab-0001"),
    )
    .await;
    // The accounts file (inline accounts) is asked first: cpe-0001 keeps its own password.
    plain(&broker, "cpe-0001", &cpe_password("cpe-0001"))
        .await
        .unwrap();
    refused(
        &broker,
        "cpe-0001",
        &expected_password(NEW_SECRET, "cpe-0001"),
    )
    .await;
    // ... but a cpe- name it does not hold is derived.
    plain(
        &broker,
        "cpe-9999",
        &expected_password(NEW_SECRET, "cpe-9999"),
    )
    .await
    .unwrap();
    assert_eq!(broker.stat("auth_plain"), 4);
}

#[tokio::test]
async fn scram_sha256_login_with_the_derived_password() {
    let files = Files::new("scram");
    let broker = files.broker(&["new"]).await;
    let password = expected_password(NEW_SECRET, "dev-0002");
    let (_client, jid) = peers::client(
        broker.addr(SCRAM_SHA256_TLS12),
        "dev-0002@example.net/cwmp",
        &password,
        Transport::StartTls,
    )
    .await;
    assert_eq!(jid.to_string(), "dev-0002@example.net/cwmp");
    assert_eq!(broker.stat("auth_scram_sha256"), 1, "it really used SCRAM");
    // Again, with the keys cached this time.
    let (_again, _) = peers::client(
        broker.addr(SCRAM_SHA256_TLS12),
        "dev-0002@example.net/second",
        &password,
        Transport::StartTls,
    )
    .await;
    assert_eq!(broker.stat("auth_scram_sha256"), 2);

    peers::client_login_refused(
        broker.addr(SCRAM_SHA256_TLS12),
        "dev-0002@example.net/cwmp",
        &expected_password(OLD_SECRET, "dev-0002"),
        || broker.stat("logins_failed") >= 1,
    )
    .await;
    assert_eq!(broker.stat("auth_scram_sha256"), 2);
}

#[tokio::test]
async fn during_a_rotation_both_secrets_work_and_after_it_only_the_new_one() {
    let files = Files::new("rotation");
    let broker = files.broker(&["new", "old"]).await;
    let (new_pw, old_pw) = (
        expected_password(NEW_SECRET, "dev-0003"),
        expected_password(OLD_SECRET, "dev-0003"),
    );
    plain(&broker, "dev-0003", &new_pw).await.unwrap();
    plain(&broker, "dev-0003", &old_pw).await.unwrap();
    let scram = |user: &str, password: String| {
        let addr = broker.addr(SCRAM_SHA256_TLS12);
        let jid = format!("{user}@example.net/cwmp");
        async move { peers::client(addr, &jid, &password, Transport::StartTls).await }
    };
    // SCRAM with the old secret's password: the proof matches the second candidate.
    scram("dev-0004", expected_password(OLD_SECRET, "dev-0004")).await;
    scram("dev-0005", expected_password(NEW_SECRET, "dev-0005")).await;
    assert_eq!(broker.stat("auth_scram_sha256"), 2);
    // A CPE still on the old password, online across the rotation.
    let (mut online, _) = RawPeer::login(
        broker.addr(STARTTLS),
        "dev-0006",
        &expected_password(OLD_SECRET, "dev-0006"),
        None,
    )
    .await;

    // A reload that changes nothing keeps the source.
    assert!(!reload(&broker).await.derived);

    files.write_config(&["new"]);
    let changes = reload(&broker).await;
    assert!(changes.derived, "{changes}");
    assert_eq!(changes.sessions_closed, 0, "{changes}");
    refused(&broker, "dev-0003", &old_pw).await;
    plain(&broker, "dev-0003", &new_pw).await.unwrap();
    // The SCRAM keys cached for the old secret are gone with it.
    let failed = broker.stat("logins_failed");
    peers::client_login_refused(
        broker.addr(SCRAM_SHA256_TLS12),
        "dev-0004@example.net/cwmp",
        &expected_password(OLD_SECRET, "dev-0004"),
        || broker.stat("logins_failed") > failed,
    )
    .await;
    scram("dev-0004", expected_password(NEW_SECRET, "dev-0004")).await;
    // The session logged in before the rotation stays, as after a password change.
    online
        .send("<iq type='get' id='p2'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    assert_eq!(online.element().await.attr("type"), Some("result"));

    // Without [accounts.derived], derived accounts are gone and their sessions closed.
    let text = std::fs::read_to_string(&files.config).unwrap();
    let cut = text.find("\n[accounts.derived]").unwrap();
    std::fs::write(&files.config, &text[..cut]).unwrap();
    let changes = reload(&broker).await;
    assert!(changes.derived, "{changes}");
    // dev-0006's session, and the SCRAM clients' if their close has not reached the broker yet.
    assert!(changes.sessions_closed >= 1, "{changes}");
    online.expect_stream_error("not-authorized").await;
    refused(&broker, "dev-0003", &new_pw).await;
}

#[tokio::test]
async fn a_short_secret_or_a_prefix_covering_an_acs_account_is_refused() {
    let files = Files::new("invalid");
    files.write_config(&["new"]);
    std::fs::write(files.dir.join("new.key"), "too short\n").unwrap();
    let config = crbroker::config::Config::load(&files.config).unwrap();
    let err = crbroker::Broker::start(config)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("\"new\"") && err.contains("new.key") && err.contains("at least 32"),
        "{err}"
    );

    let text = std::fs::read_to_string(&files.config)
        .unwrap()
        .replace("[\"dev-\", \"cpe-\"]", "[\"dev-\", \"ac\"]");
    std::fs::write(&files.config, &text).unwrap();
    let err = crbroker::config::Config::load(&files.config).unwrap_err();
    let line = text
        .lines()
        .position(|l| l.starts_with("username_prefixes"))
        .unwrap()
        + 1;
    assert_eq!(
        (err.line, err.key.as_str()),
        (line, "accounts.derived.username_prefixes"),
        "{err}"
    );
    assert!(err.message.contains("\"acs\""), "{err}");
}

/// `crbroker derive-password` with the test configuration.
fn derive_password(files: &Files, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_crbroker"))
        .arg("derive-password")
        .args(args)
        .arg("--config")
        .arg(&files.config)
        .output()
        .expect("crbroker runs")
}

fn stdout_line(output: &std::process::Output) -> String {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone())
        .unwrap()
        .trim_end()
        .to_string()
}

/// Run `script` with `sh -c`; panics with what to install when a tool is missing.
fn shell(script: &str) -> String {
    let output = Command::new("sh")
        .arg("-c")
        .arg(script)
        .output()
        .expect("sh runs");
    assert!(
        output.status.success(),
        "`{script}` failed (needs openssl and coreutils' basenc: apt-get install openssl coreutils): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .trim_end()
        .to_string()
}

#[test]
fn derive_password_matches_hmac_the_openssl_one_liner_and_the_genieacs_extension() {
    let files = Files::new("cli");
    files.write_config(&["new", "old"]);
    let printed = stdout_line(&derive_password(&files, &["DEV-0042"]));
    assert_eq!(printed, expected_password(NEW_SECRET, "dev-0042"));
    let old = stdout_line(&derive_password(
        &files,
        &["dev-0042", "--secret-id", "old"],
    ));
    assert_eq!(old, expected_password(OLD_SECRET, "dev-0042"));

    // The one-liner of the README, verbatim apart from the file and the username.
    let key = files.dir.join("new.key");
    let one_liner = format!(
        "printf %s 'dev-0042' | tr 'A-Z' 'a-z' | openssl dgst -sha256 -hmac \"$(cat '{}')\" -binary | basenc --base64url | tr -d '=\\n'",
        key.display()
    );
    assert_eq!(shell(&one_liner), printed);

    // The GenieACS extension, run by node.
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/genieacs/derive-xmpp-password.js");
    let node = Command::new("node")
        .arg(&script)
        .arg(&key)
        .arg("DEV-0042")
        .output()
        .expect(
            "node not found: apt-get install nodejs (the GenieACS extension is checked with it)",
        );
    assert_eq!(stdout_line(&node), printed);

    // Not a derived account, an unknown secret id: exit 2 with the reason.
    let refused = derive_password(&files, &["acs"]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("not a derived account"),
        "{refused:?}"
    );
    let refused = derive_password(&files, &["dev-1", "--secret-id", "nope"]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("new, old"),
        "{refused:?}"
    );
}
