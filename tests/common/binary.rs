//! The real `crbroker` binary as a child process, on free loopback ports.

use super::*;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

/// Free loopback ports (bound and released; the broker binds them right after).
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<_> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// The test config with its ops listener (the last `127.0.0.1:0`, which [`start_binary`] leaves
/// alone) on a known free port; returns the text and that address.
pub fn with_ops_port(config_text: &str) -> (String, std::net::SocketAddr) {
    let mut text = config_text.to_string();
    let ops_port = free_ports(1)[0];
    let at = text.rfind("address = \"127.0.0.1:0\"").unwrap();
    assert!(text[..at].ends_with(
        "# Any free port: tests read the bound one from Broker::ops_addr (never 5280).\n"
    ));
    text.replace_range(
        at..,
        &text[at..].replacen("127.0.0.1:0", &format!("127.0.0.1:{ops_port}"), 1),
    );
    (text, format!("127.0.0.1:{ops_port}").parse().unwrap())
}

pub struct Running {
    pub child: Child,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start_binary(config_text: &str) -> (Running, Vec<std::net::SocketAddr>) {
    let ports = free_ports(5);
    let mut text = config_text.to_string();
    for port in &ports {
        text = text.replacen("127.0.0.1:0", &format!("127.0.0.1:{port}"), 1);
    }
    let path = pki().dir.join(format!("shutdown-{}.toml", ports[0]));
    std::fs::write(&path, text).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_crbroker"))
        .arg("--config")
        .arg(&path)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("broker binary starts");
    let addrs: Vec<std::net::SocketAddr> = ports
        .iter()
        .map(|p| format!("127.0.0.1:{p}").parse().unwrap())
        .collect();
    (Running { child }, addrs)
}

pub async fn wait_listening(addr: std::net::SocketAddr) {
    let deadline = Instant::now() + IO_TIMEOUT;
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < deadline, "broker did not start listening");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Running {
    /// Resident memory of the broker process in KiB (VmRSS).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }
}
