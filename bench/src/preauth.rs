//! `pre-auth-memory`: what unauthenticated connections cost the broker.
//!
//! Opens N connections (each from its own 127.x source address) that all stop at the same point
//! of a login and stay there, samples the broker's RSS before and while they are held, and reports
//! the growth per connection. Stages:
//! - `record`: on a direct-TLS port, a 5-byte TLS record header announcing `--announce` bytes and
//!   then one byte of it (what an attacker sends to make a server reserve a record buffer);
//! - `proceed`: on a STARTTLS port, stream header and `<starttls/>`, held right after `<proceed/>`
//!   before any TLS byte;
//! - `connected`: held right after the TCP connect, before any byte (on a PROXY protocol
//!   listener: a connection waiting for its header).
//!
//! With `--proxy-header` each connection first sends a PROXY v1 header naming its own client
//! address (198.18.x.y, one per connection), for a listener with `proxy_protocol = true` and
//! `proxy_from = ["127.0.0.0/8"]`.
//!
//! The hold must end before the broker's pre-auth deadline (`limits.pre_auth_timeout_secs`).

use crate::cpe::source_ip;
use crate::procstat;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Stage {
    Record,
    Proceed,
    Connected,
}

pub struct PreAuthArgs {
    pub addr: SocketAddr,
    pub connections: usize,
    pub stage: Stage,
    pub announce: u16,
    pub domain: String,
    pub broker_pid: u32,
    pub settle: Duration,
    /// Send a PROXY v1 header before the stage's bytes.
    pub proxy_header: bool,
}

pub struct PreAuthResult {
    pub held: usize,
    pub rss_before_kib: u64,
    pub rss_held_kib: u64,
}

impl PreAuthResult {
    pub fn kib_per_connection(&self) -> f64 {
        (self.rss_held_kib as f64 - self.rss_before_kib as f64) / self.held.max(1) as f64
    }
}

async fn connect(addr: SocketAddr, index: usize) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source_ip(index), 0))?;
    socket.connect(addr).await
}

/// Bring one connection to the stage and return it (still open).
async fn hold_one(args: &PreAuthArgs, index: usize) -> Result<TcpStream, String> {
    let mut tcp = connect(args.addr, index)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    if args.proxy_header && args.stage != Stage::Connected {
        let [hi, lo] = (index as u16).to_be_bytes();
        let header = format!(
            "PROXY TCP4 198.18.{hi}.{lo} {} 40000 {}\r\n",
            args.addr.ip(),
            args.addr.port()
        );
        tcp.write_all(header.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
    }
    match args.stage {
        Stage::Connected => {}
        Stage::Record => {
            let [hi, lo] = args.announce.to_be_bytes();
            // Handshake record, legacy version 3.1, length `announce`, then one byte of it.
            tcp.write_all(&[22, 3, 1, hi, lo, 1])
                .await
                .map_err(|e| format!("write: {e}"))?;
        }
        Stage::Proceed => {
            let header = format!(
                "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
                 xmlns:stream='http://etherx.jabber.org/streams' to='{}' version='1.0'>",
                args.domain
            );
            tcp.write_all(header.as_bytes())
                .await
                .map_err(|e| format!("write: {e}"))?;
            read_until(&mut tcp, "</stream:features>").await?;
            tcp.write_all(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
                .await
                .map_err(|e| format!("write: {e}"))?;
            read_until(&mut tcp, "<proceed").await?;
        }
    }
    Ok(tcp)
}

async fn read_until(tcp: &mut TcpStream, marker: &str) -> Result<(), String> {
    let mut seen = Vec::new();
    let mut chunk = [0u8; 1024];
    let deadline = Instant::now() + Duration::from_secs(10);
    while !String::from_utf8_lossy(&seen).contains(marker) {
        let left = deadline.saturating_duration_since(Instant::now());
        let n = tokio::time::timeout(left, tcp.read(&mut chunk))
            .await
            .map_err(|_| format!("no {marker} within 10 s"))?
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err(format!("closed before {marker}"));
        }
        seen.extend_from_slice(&chunk[..n]);
    }
    Ok(())
}

pub async fn run(args: PreAuthArgs) -> Result<PreAuthResult, String> {
    let pid = procstat::Pid::Other(args.broker_pid);
    // Warm-up: the allocator's arenas and the runtime's workers reach their working size.
    let warm: Vec<_> = (0..50.min(args.connections)).collect();
    let mut warm_conns = Vec::new();
    for i in warm {
        warm_conns.push(hold_one(&args, i).await?);
    }
    drop(warm_conns);
    tokio::time::sleep(args.settle).await;
    let rss_before_kib = procstat::rss_kib(pid).ok_or("cannot read the broker's RSS")?;
    let started = Instant::now();
    let mut held = Vec::with_capacity(args.connections);
    // One at a time: fast enough on loopback, and the figure has no login-storm effects.
    for i in 0..args.connections {
        held.push(hold_one(&args, i + 1000).await?);
    }
    tokio::time::sleep(args.settle).await;
    let rss_held_kib = procstat::rss_kib(pid).ok_or("cannot read the broker's RSS")?;
    if started.elapsed() > Duration::from_secs(15) {
        return Err(
            "holding took longer than 15 s: the broker's pre-auth deadline may have \
                    closed connections; lower -n"
                .into(),
        );
    }
    // Still open? A connection the broker closed would make the figure meaningless.
    let mut probe = [0u8; 1];
    for conn in held.iter_mut().take(10) {
        if let Ok(Ok(0)) =
            tokio::time::timeout(Duration::from_millis(1), conn.read(&mut probe)).await
        {
            return Err("the broker closed held connections (a cap?)".into());
        }
    }
    Ok(PreAuthResult {
        held: held.len(),
        rss_before_kib,
        rss_held_kib,
    })
}
