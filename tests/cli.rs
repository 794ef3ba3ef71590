//! The support-staff CLI (`crbroker cr | sessions | kick | reload`) as a person runs it: the real
//! binary as the broker, the real binary as the client, a raw CPE over STARTTLS answering.

mod common;

use common::binary::{free_ports, start_binary, wait_listening, with_ops_port, Running};
use common::*;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Output;

const CONN_REQ_NS: &str = "urn:broadband-forum-org:cwmp:xmppConnReq-1-0";

struct Cli {
    _broker: Running,
    /// The STARTTLS c2s listener.
    c2s: SocketAddr,
    ops: SocketAddr,
    config: PathBuf,
}

/// The broker binary with its ops listener (the last `127.0.0.1:0` of the test config, which
/// `start_binary` leaves alone) on a known free port.
async fn start() -> Cli {
    let (text, ops) = with_ops_port(&config_text(&TestOptions::default()));
    let (broker, addrs) = start_binary(&text);
    wait_listening(ops).await;
    wait_listening(addrs[STARTTLS]).await;
    // start_binary's file name: the reload test edits it.
    let config = pki().dir.join(format!("shutdown-{}.toml", addrs[0].port()));
    assert!(config.exists(), "{}", config.display());
    Cli {
        _broker: broker,
        c2s: addrs[STARTTLS],
        ops,
        config,
    }
}

impl Cli {
    /// `crbroker <args> --api http://<ops>` with the token in the environment.
    async fn run(&self, args: &[&str]) -> Output {
        let api = format!("http://{}", self.ops);
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--api", &api]);
        crbroker(&all, Some(API_TOKEN)).await
    }

    async fn cpe(&self, i: usize) -> (RawPeer, String) {
        let user = cpe_user(i);
        RawPeer::login(self.c2s, &user, &cpe_password(&user), Some("cwmp")).await
    }
}

async fn crbroker(args: &[&str], token: Option<&str>) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_crbroker"));
    command.args(args).env_remove("CRBROKER_API_TOKEN");
    if let Some(token) = token {
        command.env("CRBROKER_API_TOKEN", token);
    }
    tokio::time::timeout(IO_TIMEOUT * 3, command.output())
        .await
        .expect("the CLI finishes")
        .expect("the CLI runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn code(output: &Output) -> i32 {
    output.status.code().expect("exited, not killed")
}

/// The exit status is `expected` (else fail showing both outputs); the standard output.
fn expect(output: &Output, expected: i32) -> String {
    assert_eq!(
        code(output),
        expected,
        "stdout: {}stderr: {}",
        stdout(output),
        stderr(output)
    );
    stdout(output)
}

/// Run `crbroker <args>` while the CPE reads the request and answers with `answer(id)` (a
/// `result`, or an error stanza); the CLI's output and the request the CPE saw.
async fn cr_answered(
    cli: &Cli,
    cpe: &mut RawPeer,
    args: &[&str],
    answer: impl FnOnce(&str) -> String,
) -> (Output, crbroker::xml::Element) {
    let cpe_side = async {
        let request = cpe.element().await;
        let id = request.attr("id").unwrap().to_string();
        cpe.send(&answer(&id)).await;
        request
    };
    tokio::join!(cli.run(args), cpe_side)
}

fn result(id: &str) -> String {
    format!("<iq type='result' id='{id}'/>")
}

#[tokio::test]
async fn cr_sessions_kick_and_offline() {
    let cli = start().await;
    let (mut cpe, jid) = cli.cpe(0).await;
    let bare = jid.split('/').next().unwrap().to_string();

    // Online: the session and its details.
    let text = expect(&cli.run(&["sessions", &bare]).await, 0);
    assert!(
        text.starts_with(&format!("{bare}: online, 1 session\n")),
        "{text}"
    );
    assert!(
        text.contains(&jid) && text.contains("PLAIN") && text.contains("127.0.0.1:"),
        "{text}"
    );

    // A full JID (its `/` percent-encoded in the path) names that session.
    let text = expect(&cli.run(&["sessions", &jid]).await, 0);
    assert!(
        text.starts_with(&format!("{jid}: online, 1 session\n")),
        "{text}"
    );

    // A connection request the CPE accepts: exit 0, one line naming the outcome and the JID.
    let args = [
        "cr",
        &bare,
        "--username",
        "cr-user",
        "--password",
        "cr pass&<",
    ];
    let (out, request) = cr_answered(&cli, &mut cpe, &args, result).await;
    let line = expect(&out, 0);
    assert!(
        line.starts_with(&format!("result: {jid} accepted")),
        "{line}"
    );
    assert_eq!(line.lines().count(), 1, "{line}");
    let payload = request.child("connectionRequest", CONN_REQ_NS).unwrap();
    let field = |name| payload.child(name, CONN_REQ_NS).unwrap().text();
    assert_eq!(
        (field("username"), field("password")),
        ("cr-user".into(), "cr pass&<".into())
    );

    // The CPE refuses (wrong connection-request credentials): exit 1, the condition shown.
    let args = ["cr", &jid, "--username", "u", "--password", "p"];
    let (out, _) = cr_answered(&cli, &mut cpe, &args, |id| {
        format!("<iq type='error' id='{id}'><error type='auth'><not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/><text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>bad credentials</text></error></iq>")
    })
    .await;
    let line = expect(&out, 1);
    assert!(
        line.starts_with(&format!("cpe_error: {jid} refused")),
        "{line}"
    );
    assert!(
        line.contains("not-authorized") && line.contains("bad credentials"),
        "{line}"
    );

    // --json prints the API's answer.
    let args = ["cr", &bare, "--username", "u", "--password", "p", "--json"];
    let (out, _) = cr_answered(&cli, &mut cpe, &args, result).await;
    let value: serde_json::Value = serde_json::from_str(&expect(&out, 0)).unwrap();
    assert_eq!(
        (&value["outcome"], &value["jid"]),
        (&"result".into(), &jid.as_str().into())
    );

    // Kick: the session closes with <policy-violation/>, the CLI says how many.
    let text = expect(&cli.run(&["kick", &bare]).await, 0);
    assert_eq!(text, format!("{bare}: closed 1 session\n"));
    cpe.expect_stream_error("policy-violation").await;

    // Now offline (once the session's task has ended): `sessions JID` and `cr` say so, exit 1;
    // kicking again closes nothing.
    let mut out = cli.run(&["sessions", &bare]).await;
    for _ in 0..100 {
        if code(&out) == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        out = cli.run(&["sessions", &bare]).await;
    }
    assert_eq!(expect(&out, 1), format!("{bare}: offline\n"));
    let out = cli
        .run(&["cr", &bare, "--username", "u", "--password", "p"])
        .await;
    let line = expect(&out, 1);
    assert!(
        line.starts_with(&format!("offline: {bare} is not online")),
        "{line}"
    );
    let text = expect(&cli.run(&["kick", &bare]).await, 1);
    assert_eq!(text, format!("{bare}: no session open, nothing closed\n"));
}

#[tokio::test]
async fn sessions_pages_and_counts() {
    let cli = start().await;
    let mut peers = Vec::new();
    for i in 0..3 {
        peers.push(cli.cpe(i).await);
    }
    let listed = |text: &str| {
        let jids = peers.iter().map(|(_, jid)| jid);
        jids.filter(|jid| text.contains(jid.as_str())).count()
    };

    let text = expect(&cli.run(&["sessions"]).await, 0);
    assert!(
        text.starts_with("online: 3 CPE, 0 ACS account, 0 component sessions\n"),
        "{text}"
    );
    assert_eq!(listed(&text), 3, "{text}");
    assert!(!text.contains("next page"), "{text}");

    // Two per page: the first page names the cursor; --cursor gets the rest; --all gets all.
    let text = expect(&cli.run(&["sessions", "--limit", "2"]).await, 0);
    assert_eq!(listed(&text), 2, "{text}");
    let cursor = text
        .lines()
        .last()
        .and_then(|hint| hint.strip_prefix("next page: --cursor '"))
        .and_then(|rest| rest.strip_suffix("' (or --all)"))
        .unwrap_or_else(|| panic!("{text}"));
    let args = ["sessions", "--limit", "2", "--cursor", cursor];
    let rest = expect(&cli.run(&args).await, 0);
    assert_eq!(listed(&rest), 1, "{rest}");
    let text = expect(&cli.run(&["sessions", "--limit", "2", "--all"]).await, 0);
    assert_eq!(listed(&text), 3, "{text}");
    assert!(!text.contains("next page"), "{text}");

    // --json --all: one API answer per line.
    let args = ["sessions", "--limit", "2", "--all", "--json"];
    let text = expect(&cli.run(&args).await, 0);
    let pages: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(pages.len(), 2);
    assert_eq!(pages[0]["counts"]["cpe"], 3);

    // A limit the API refuses: its message, exit 2.
    let out = cli.run(&["sessions", "--limit", "0"]).await;
    expect(&out, 2);
    assert!(
        stderr(&out).contains("limit: must be 1..=1000"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test]
async fn bad_token_no_token_and_no_broker_are_exit_2() {
    let cli = start().await;
    let api = format!("http://{}", cli.ops);
    let out = crbroker(
        &["sessions", "--api", &api, "--token", "not-the-token"],
        None,
    )
    .await;
    assert!(expect(&out, 2).is_empty());
    let err = stderr(&out);
    assert!(
        err.contains("401") && err.contains("bearer token") && err.contains("--token"),
        "{err}"
    );
    assert!(!err.contains("not-the-token"), "{err}");

    let out = crbroker(&["kick", "cpe-0000@example.net", "--api", &api], None).await;
    expect(&out, 2);
    assert!(stderr(&out).contains("no API token"), "{}", stderr(&out));

    // Nothing listens there.
    let nobody = format!("127.0.0.1:{}", free_ports(1)[0]);
    let out = crbroker(&["reload", "--api", &nobody], Some(API_TOKEN)).await;
    expect(&out, 2);
    assert!(
        stderr(&out).contains("cannot reach the broker's API at http://127.0.0.1:"),
        "{}",
        stderr(&out)
    );

    // A JID the API refuses: its message, exit 2.
    let out = cli
        .run(&["cr", "not a jid", "--username", "u", "--password", "p"])
        .await;
    expect(&out, 2);
    assert!(
        stderr(&out).contains("400") && stderr(&out).contains("to: "),
        "{}",
        stderr(&out)
    );
}

#[tokio::test]
async fn reload_reports_and_the_api_address_comes_from_the_config() {
    let cli = start().await;
    let config = cli.config.to_str().unwrap();
    // No --api: the [ops] address of --config's file.
    let out = crbroker(&["--config", config, "reload"], Some(API_TOKEN)).await;
    assert_eq!(
        expect(&out, 0),
        format!(
            "reloaded {config}: nothing changed ({} accounts)\n",
            CPE_ACCOUNTS + 1
        )
    );

    // A limit changed: named.
    let text = std::fs::read_to_string(&cli.config).unwrap();
    let changed = text.replace("outbox_stanzas = 64", "outbox_stanzas = 65");
    assert_ne!(changed, text);
    std::fs::write(&cli.config, &changed).unwrap();
    let text = expect(&cli.run(&["reload"]).await, 0);
    assert!(text.contains("limits [limits.outbox_stanzas]"), "{text}");

    // A change only a restart applies: refused, why, exit 1.
    std::fs::write(
        &cli.config,
        changed.replace("domain = \"example.net\"", "domain = \"example.org\""),
    )
    .unwrap();
    let text = expect(&cli.run(&["reload"]).await, 1);
    assert!(
        text.starts_with("reload refused: ") && text.contains("server.domain"),
        "{text}"
    );
    let text = expect(&cli.run(&["reload", "--json"]).await, 1);
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(value["error"]["status"], 422);
}
