//! Several broker processes on one c2s port (SO_REUSEPORT): two real binaries share it and the
//! kernel spreads connections over both; without `reuse_port` the second one does not start and
//! says why.

mod common;

use common::binary::*;
use common::*;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A broker with one STARTTLS listener on `port` and its ops listener on a free port (the
/// first address `start_binary` hands out).
fn shared_port_config(port: u16, reuse_port: bool) -> String {
    let pki = pki();
    format!(
        r#"
[server]
domain = "{DOMAIN}"

[tls]
cert = "{cert}"
key = "{key}"

[[listener]]
address = "127.0.0.1:{port}"
kind = "starttls"
reuse_port = {reuse_port}

[ops]
address = "127.0.0.1:0"
"#,
        cert = pki.cert_path.display(),
        key = pki.key_path.display(),
    )
}

/// `crbroker_connections_accepted_total` of the broker whose ops listener is `ops`.
async fn accepted(ops: SocketAddr) -> f64 {
    let text = reqwest::get(format!("http://{ops}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    scrape
        .samples
        .iter()
        .find(|s| s.metric == "crbroker_connections_accepted_total")
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v) => v,
            ref other => panic!("not a counter: {other:?}"),
        })
        .expect("crbroker_connections_accepted_total")
}

/// A connection that the broker behind `addr` answered (stream header and features).
async fn answered(addr: SocketAddr) -> RawPeer {
    RawPeer::greeted(Box::new(connect_resetting(addr).await)).await
}

#[tokio::test]
async fn two_processes_share_a_port_with_reuse_port() {
    let port = free_ports(1)[0];
    let shared: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (_first, first_addrs) = start_binary(&shared_port_config(port, true));
    let (_second, second_addrs) = start_binary(&shared_port_config(port, true));
    let (first_ops, second_ops) = (first_addrs[0], second_addrs[0]);
    wait_listening(first_ops).await;
    wait_listening(second_ops).await;

    const CONNECTIONS: usize = 40;
    let mut peers = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        peers.push(answered(shared).await);
    }
    let (first, second) = (accepted(first_ops).await, accepted(second_ops).await);
    // The kernel hashes each connection's addresses and ports: 40 connections all landing on
    // one process has odds of 2^-39.
    println!("{CONNECTIONS} connections spread over two processes: {first} + {second}");
    assert!(first > 0.0 && second > 0.0, "spread: {first} + {second}");
    assert_eq!(first + second, CONNECTIONS as f64);
}

/// Run the binary on `config` until it exits (it must, within the I/O timeout); its stderr.
fn run_until_exit(config: &str, name: &str) -> (std::process::ExitStatus, String) {
    let path = pki().dir.join(name);
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_crbroker"))
        .arg("--config")
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("broker binary starts");
    let deadline = Instant::now() + IO_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the second broker started on a port already taken");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    (status, stderr)
}

#[tokio::test]
async fn without_reuse_port_the_second_process_does_not_start() {
    let port = free_ports(1)[0];
    let (_first, first_addrs) = start_binary(&shared_port_config(port, false));
    wait_listening(first_addrs[0]).await;
    wait_listening(format!("127.0.0.1:{port}").parse().unwrap()).await;

    // Neither without reuse_port, nor with it while the first process did not set it.
    for reuse_port in [false, true] {
        let mut config = shared_port_config(port, reuse_port);
        let ops = free_ports(1)[0];
        config = config.replace("127.0.0.1:0", &format!("127.0.0.1:{ops}"));
        let (status, stderr) = run_until_exit(&config, &format!("taken-{port}-{reuse_port}.toml"));
        assert!(!status.success(), "{stderr}");
        assert!(
            stderr.contains(&format!("cannot listen on 127.0.0.1:{port}")),
            "{stderr}"
        );
        assert!(stderr.contains("reuse_port = true"), "{stderr}");
    }
    // The first one serves on.
    let _peer = answered(format!("127.0.0.1:{port}").parse().unwrap()).await;
}
