//! The real `crbroker` binary as a child process, on free loopback ports.

use super::*;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

/// Free loopback ports for a child process (a broker, nats-server, PostgreSQL) to bind right
/// after: checked free by binding them, then released.
///
/// They come from below the kernel's ephemeral range (32768-60999 by default), from a sequence
/// this process walks once: a port the kernel handed out with `bind(0)` could be handed out
/// again at once, to another test's outgoing connection or listener, before the child binds it
/// (seen: "Address already in use" when many tests start brokers at once). The sequence starts at
/// an offset taken from the process id, so test binaries run one after another do not reuse the
/// ports of a child the previous one may have left in TIME_WAIT.
pub fn free_ports(n: usize) -> Vec<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 10_000;
    const SPAN: u32 = 22_000; // up to 31,999
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7919) % SPAN,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    let mut ports = Vec::with_capacity(n);
    for _ in 0..SPAN {
        if ports.len() == n {
            break;
        }
        let port = (FIRST + NEXT.fetch_add(1, Ordering::Relaxed) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            ports.push(port);
        }
    }
    assert_eq!(ports.len(), n, "no free loopback ports left below 32000");
    ports
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
