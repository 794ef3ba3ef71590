//! Emulated CPEs: log in (TCP from a spread source address, STARTTLS or direct TLS, SASL PLAIN or
//! SCRAM-SHA-256, or EXTERNAL with a device certificate; resource bind, no presence), then idle and answer connection requests until told to stop.

use crate::xml::{self, Frame, Framer};
use rustls::pki_types::ServerName;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

pub const NS_CWMP: &str = "urn:broadband-forum-org:cwmp:xmppConnReq-1-0";

/// What every CPE session needs to know about the server.
pub struct Target {
    pub addr: SocketAddr,
    pub direct_tls: bool,
    pub domain: String,
    pub server_name: ServerName<'static>,
    pub tls: TlsConnector,
    pub resource: String,
    pub passwords: crate::sasl::Passwords,
    pub mechanism: crate::sasl::Mechanism,
    /// The password the ACS puts in connection requests (the username is the CPE's own).
    pub cr_password: String,
    /// Bind each client socket to its own 127.x.y.z source address.
    pub spread_sources: bool,
    /// SASL EXTERNAL: each CPE presents its own certificate from this CA (else PLAIN).
    pub devices: Option<Arc<crate::devices::DeviceCa>>,
    /// Where a CPE whose session the server ended logs in again (`--reconnect-to`), as a CPE
    /// whose broker went away reconnects through the load balancer to another node: CPE `i`
    /// to `reconnect[i % len]`. Empty: it does not.
    pub reconnect: Vec<Arc<Target>>,
    /// How a lost CPE spreads its first new login attempt: a random wait in [0, this).
    pub reconnect_spread: std::time::Duration,
}

/// Waits between failed login attempts of a reconnecting CPE: doubling from the first to the
/// last, each with random jitter of up to half of it (real CPEs back off too: TR-181
/// `XMPP.Connection.{i}.ServerRetry*`).
const RETRY_FIRST: std::time::Duration = std::time::Duration::from_millis(250);
const RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(8);

/// A pseudo-random fraction in [0, 1) from a CPE index and an attempt number (splitmix64).
fn jitter(index: usize, attempt: u32) -> f64 {
    let mut z = (index as u64) << 20 ^ u64::from(attempt) ^ 0x9E37_79B9_7F4A_7C15;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// Counters shared by all CPE sessions.
#[derive(Default)]
pub struct CpeCounters {
    pub crs_received: AtomicU64,
    pub crs_bad_credentials: AtomicU64,
    pub other_requests: AtomicU64,
    /// Sessions the server ended (or that broke) before the tool asked them to close.
    pub lost: AtomicU64,
    pub lost_samples: Mutex<Vec<String>>,
    pub closed_cleanly: AtomicU64,
    pub closed_uncleanly: AtomicU64,
    /// Lost sessions logged in again at `Target::reconnect`.
    pub relogged: AtomicU64,
}

impl CpeCounters {
    fn lost(&self, index: usize, why: String) {
        self.lost.fetch_add(1, Ordering::Relaxed);
        let mut samples = self.lost_samples.lock().unwrap_or_else(|e| e.into_inner());
        if samples.len() < 5 {
            samples.push(format!("{}: {why}", username(index)));
        }
    }
}

/// The account number of CPE index 0 (`--first-account`): several tool processes log in disjoint
/// accounts, e.g. one per node of a cluster. Set once, before any login.
static FIRST_ACCOUNT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

pub fn set_first_account(first: usize) {
    FIRST_ACCOUNT.store(first, std::sync::atomic::Ordering::Relaxed);
}

pub fn username(index: usize) -> String {
    let first = FIRST_ACCOUNT.load(std::sync::atomic::Ordering::Relaxed);
    format!("cpe-{:06}", first + index)
}

/// Source address of client `index`: 127.1.0.1 upward, 250 hosts per /24, so that every
/// connection has its own address and the ephemeral port range is never the limit.
pub fn source_ip(index: usize) -> IpAddr {
    let net = index / 250;
    let host = (index % 250 + 1) as u8;
    IpAddr::V4(Ipv4Addr::new(
        127,
        (1 + net / 256) as u8,
        (net % 256) as u8,
        host,
    ))
}

pub type Stream = TlsStream<TcpStream>;

/// A logged-in CPE: the TLS stream and whatever was read past the bind result.
pub struct Session {
    pub stream: Stream,
    pub framer: Framer,
}

const READ_CHUNK: usize = 2048;

async fn next_frame<S: AsyncRead + Unpin>(
    stream: &mut S,
    framer: &mut Framer,
) -> Result<Frame, String> {
    let mut buf = [0u8; READ_CHUNK];
    loop {
        if let Some(frame) = framer.next_frame().map_err(|e| e.to_string())? {
            return Ok(frame);
        }
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("connection closed by server".into());
        }
        framer.push(&buf[..n]);
    }
}

/// The next top-level element; a stream error or close is an error naming what came.
pub async fn next_element<S: AsyncRead + Unpin>(
    stream: &mut S,
    framer: &mut Framer,
    stage: &str,
) -> Result<String, String> {
    match next_frame(stream, framer).await {
        Ok(Frame::Element(e)) if xml::name(&e) == "stream:error" => {
            Err(format!("{stage}: stream error {e}"))
        }
        Ok(Frame::Element(e)) => Ok(e),
        Ok(Frame::Header(_)) => Err(format!("{stage}: unexpected stream header")),
        Ok(Frame::Close) => Err(format!("{stage}: stream closed by server")),
        Err(e) => Err(format!("{stage}: {e}")),
    }
}

pub async fn send<S: AsyncWrite + Unpin>(stream: &mut S, text: &str) -> Result<(), String> {
    stream
        .write_all(text.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    stream.flush().await.map_err(|e| format!("flush: {e}"))
}

/// Send our stream header and read the server's header and features.
pub async fn open_stream<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    framer: &mut Framer,
    domain: &str,
    stage: &str,
) -> Result<String, String> {
    framer.reset();
    send(
        stream,
        &format!(
            "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
             xmlns:stream='http://etherx.jabber.org/streams' to='{domain}' version='1.0'>"
        ),
    )
    .await?;
    match next_frame(stream, framer).await {
        Ok(Frame::Header(_)) => {}
        Ok(other) => return Err(format!("{stage}: expected a stream header, got {other:?}")),
        Err(e) => return Err(format!("{stage}: {e}")),
    }
    let features = next_element(stream, framer, stage).await?;
    if xml::name(&features) != "stream:features" {
        return Err(format!("{stage}: expected stream features, got {features}"));
    }
    Ok(features)
}

async fn connect_tcp(target: &Target, index: usize) -> Result<TcpStream, String> {
    let socket = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    if target.spread_sources {
        socket
            .bind(SocketAddr::new(source_ip(index), 0))
            .map_err(|e| format!("bind {}: {e}", source_ip(index)))?;
    }
    let tcp = socket
        .connect(target.addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// TCP from client `index`'s source address, then TLS (after STARTTLS, or direct).
pub async fn connect_tls(target: &Target, index: usize) -> Result<(Stream, Framer), String> {
    let mut tcp = connect_tcp(target, index).await?;
    let mut framer = Framer::new();
    if !target.direct_tls {
        let features = open_stream(&mut tcp, &mut framer, &target.domain, "stream").await?;
        if !features.contains("<starttls") {
            return Err(format!("no STARTTLS offered: {features}"));
        }
        send(
            &mut tcp,
            "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>",
        )
        .await?;
        let proceed = next_element(&mut tcp, &mut framer, "starttls").await?;
        if xml::name(&proceed) != "proceed" {
            return Err(format!("starttls refused: {proceed}"));
        }
        if framer.pending() != 0 {
            return Err("data after <proceed/> before the TLS handshake".into());
        }
    }
    let connector = match &target.devices {
        Some(ca) => ca.connector(&username(index), &target.domain)?,
        None => target.tls.clone(),
    };
    let stream = connector
        .connect(target.server_name.clone(), tcp)
        .await
        .map_err(|e| format!("TLS handshake: {e}"))?;
    Ok((stream, framer))
}

/// Log CPE `index` in: TCP, TLS (STARTTLS or direct), SASL (PLAIN, SCRAM-SHA-256, or EXTERNAL
/// with a device certificate), bind.
pub async fn login(target: &Target, index: usize) -> Result<Session, String> {
    let (mut stream, mut framer) = connect_tls(target, index).await?;
    let features = open_stream(&mut stream, &mut framer, &target.domain, "sasl").await?;
    let user = username(index);
    // With a device certificate, the certificate names the account.
    let mechanism = match target.devices {
        Some(_) => crate::sasl::Mechanism::External,
        None => target.mechanism,
    };
    crate::sasl::authenticate(
        &mut stream,
        &mut framer,
        &features,
        mechanism,
        &user,
        &target.passwords.of(&user),
    )
    .await?;

    let features = open_stream(&mut stream, &mut framer, &target.domain, "bind").await?;
    if !features.contains("<bind") {
        return Err(format!("no bind offered: {features}"));
    }
    send(
        &mut stream,
        &format!(
            "<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>\
             <resource>{}</resource></bind></iq>",
            target.resource
        ),
    )
    .await?;
    let reply = next_element(&mut stream, &mut framer, "bind").await?;
    if xml::name(&reply) != "iq"
        || xml::attr(&reply, "type") != Some("result")
        || xml::attr(&reply, "id") != Some("bind1")
    {
        return Err(format!("bind refused: {reply}"));
    }
    // Requests are addressed to this JID: the server must have bound exactly it.
    let jid = xml::child_text(&reply, "jid").unwrap_or_default();
    let expected = format!("{user}@{}/{}", target.domain, target.resource);
    if !jid.eq_ignore_ascii_case(&expected) {
        return Err(format!("bound {jid:?}, expected {expected:?}"));
    }
    Ok(Session { stream, framer })
}

/// Idle and answer requests until `stop` turns true, then close the stream politely. A session
/// the server ends logs in again at `target.reconnect` when there is one.
pub async fn serve(
    mut session: Session,
    index: usize,
    target: Arc<Target>,
    counters: Arc<CpeCounters>,
    stop: watch::Receiver<bool>,
) {
    loop {
        if serve_session(session, index, &target, &counters, stop.clone()).await {
            return;
        }
        if target.reconnect.is_empty() {
            return;
        }
        let fallback = &target.reconnect[index % target.reconnect.len()];
        let spread = target.reconnect_spread.mul_f64(jitter(index, 0));
        tokio::time::sleep(spread).await;
        let mut attempt = 0;
        session = loop {
            if *stop.borrow() {
                return;
            }
            match login(fallback, index).await {
                Ok(session) => break session,
                Err(_) => {
                    attempt += 1;
                    let wait = RETRY_FIRST
                        .saturating_mul(1 << attempt.min(6))
                        .min(RETRY_MAX)
                        / 2;
                    let wait = wait + wait.mul_f64(jitter(index, attempt));
                    tokio::time::sleep(wait).await;
                }
            }
        };
        let back = counters.relogged.fetch_add(1, Ordering::Relaxed) + 1;
        if back == counters.lost.load(Ordering::Relaxed) {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis());
            eprintln!("[reconnect] all {back} lost sessions logged in again at unix ms {now}");
        }
    }
}

/// One session until the server ends it (false) or `stop` (true, closed politely).
async fn serve_session(
    mut session: Session,
    index: usize,
    target: &Target,
    counters: &CpeCounters,
    mut stop: watch::Receiver<bool>,
) -> bool {
    let user = username(index);
    let mut buf = [0u8; READ_CHUNK];
    let mut out = String::new();
    loop {
        loop {
            match session.framer.next_frame() {
                Ok(None) => break,
                Ok(Some(Frame::Element(e))) => {
                    if xml::name(&e) == "stream:error" {
                        counters.lost(index, format!("stream error: {e}"));
                        return false;
                    }
                    answer(&e, &user, target, counters, &mut out);
                }
                Ok(Some(Frame::Close)) => {
                    counters.lost(index, "server closed the stream".into());
                    return false;
                }
                Ok(Some(Frame::Header(_))) => {
                    counters.lost(index, "unexpected stream header".into());
                    return false;
                }
                Err(e) => {
                    counters.lost(index, e.to_string());
                    return false;
                }
            }
        }
        if !out.is_empty() {
            if let Err(e) = send(&mut session.stream, &out).await {
                counters.lost(index, e);
                return false;
            }
            out.clear();
            if out.capacity() > 1024 {
                out = String::new();
            }
        }
        session.framer.shrink_if_idle();
        tokio::select! {
            read = session.stream.read(&mut buf) => match read {
                Ok(0) => {
                    counters.lost(index, "connection closed by server".into());
                    return false;
                }
                Ok(n) => session.framer.push(&buf[..n]),
                Err(e) => {
                    counters.lost(index, format!("read: {e}"));
                    return false;
                }
            },
            _ = stop.wait_for(|stop| *stop) => break,
        }
    }
    let clean = close(&mut session).await;
    if clean {
        counters.closed_cleanly.fetch_add(1, Ordering::Relaxed);
    } else {
        counters.closed_uncleanly.fetch_add(1, Ordering::Relaxed);
    }
    true
}

/// Send `</stream:stream>`, wait (bounded) for the server's, then close TLS and TCP.
async fn close(session: &mut Session) -> bool {
    if send(&mut session.stream, "</stream:stream>").await.is_err() {
        return false;
    }
    let wait = async {
        loop {
            match next_frame(&mut session.stream, &mut session.framer).await {
                Ok(Frame::Close) => return true,
                Ok(_) => continue,
                // A server may just drop the connection after our close: that is fine too.
                Err(e) => return e.contains("closed"),
            }
        }
    };
    let clean = tokio::time::timeout(Duration::from_secs(5), wait)
        .await
        .unwrap_or(false);
    let _ = tokio::time::timeout(Duration::from_secs(1), session.stream.shutdown()).await;
    clean
}

/// Answer one stanza the server delivered; the reply (if any) is appended to `out`.
fn answer(element: &str, user: &str, target: &Target, counters: &CpeCounters, out: &mut String) {
    if xml::name(element) != "iq" {
        return;
    }
    let kind = xml::attr(element, "type").unwrap_or_default();
    if kind != "get" && kind != "set" {
        return;
    }
    let id = xml::attr(element, "id").unwrap_or_default();
    let to = xml::attr(element, "from").unwrap_or(&target.domain);
    if element.contains(NS_CWMP) {
        counters.crs_received.fetch_add(1, Ordering::Relaxed);
        let ok = xml::child_text(element, "username") == Some(user)
            && xml::child_text(element, "password") == Some(target.cr_password.as_str());
        if ok {
            out.push_str(&format!("<iq type='result' id='{id}' to='{to}'/>"));
        } else {
            counters.crs_bad_credentials.fetch_add(1, Ordering::Relaxed);
            out.push_str(&format!(
                "<iq type='error' id='{id}' to='{to}'><connectionRequest xmlns='{NS_CWMP}'/>\
                 <error type='cancel'><not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>\
                 </error></iq>"
            ));
        }
    } else if element.contains("urn:xmpp:ping") {
        out.push_str(&format!("<iq type='result' id='{id}' to='{to}'/>"));
    } else {
        counters.other_requests.fetch_add(1, Ordering::Relaxed);
        out.push_str(&format!(
            "<iq type='error' id='{id}' to='{to}'><error type='cancel'>\
             <service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_addresses_are_distinct_and_loopback() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..20_000 {
            let ip = source_ip(i);
            assert!(ip.is_loopback());
            let IpAddr::V4(v4) = ip else { panic!() };
            assert_ne!(v4.octets()[3], 0);
            assert_ne!(v4.octets()[3], 255);
            assert!(seen.insert(ip));
        }
    }
}
