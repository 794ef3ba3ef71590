//! Fuzz the whole unauthenticated c2s path: `crbroker::session::c2s::serve` (STARTTLS or direct
//! TLS, the rustls handshake driven by `tls::TlsStream`, stream header, SASL, bind, and the ready
//! loop of a session that got that far) over an in-memory `tokio::io::duplex` pipe, with a real
//! `Context` (router, accounts, counters, the rustls server configuration of the real
//! `tls::Identity`) built once per process.
//!
//! Input layout (see `Plan::decode`):
//!
//! * byte 0, flags: bits 0-1 = mode (below); bit 2 = the target's TLS client offers TLS 1.2 only
//!   (else 1.3 and 1.2); bit 3 = the client sends close_notify when the input is used up (else
//!   the pipe is just dropped); bits 4-7 = number `k` of chunk-size bytes that follow.
//! * `k` bytes: chunk sizes (`b + 1`), used cyclically to split what is written into separate
//!   writes (k = 0: one write per segment). After each write the target lets the broker run
//!   until it waits (virtual time) and reads what it wrote.
//! * the rest, the payload, by mode:
//!   * 0: raw bytes into the direct-TLS listener kind (ClientHello parsing, records, alerts).
//!   * 1: the STARTTLS listener kind; the payload up to its first `0xFF` is plaintext XMPP, the
//!     bytes after it are written as raw TLS bytes (after `<proceed/>`, if the broker sent it).
//!   * 2: direct TLS with a real rustls client (this target; it trusts exactly the broker's
//!     certificate): the handshake completes, then the payload is application data written
//!     through the client (stream header, SASL, bind, stanzas, garbage). `0xFF n` followed by
//!     `n` bytes injects those bytes raw on the wire, between TLS records.
//!   * 3: as 2, on the STARTTLS listener kind: the target first sends a valid plaintext opening
//!     and `<starttls/>`, and starts TLS once the broker answers `<proceed/>`.
//!
//! Checks, for every input:
//!
//! 1. no panic (ASan and debug assertions on, as cargo-fuzz builds);
//! 2. `serve` returns for every input within `EXEC_BOUND` of virtual time after the client end is
//!    dropped (time is paused: a stalled negotiation runs into the broker's own deadlines at once,
//!    without wall-clock waiting);
//! 3. afterwards no client session is bound in the router, `sessions_online` and
//!    `connections_open` are back to 0, and no connection request is pending;
//! 4. the pre-auth counters went back (the caps allow one pre-auth connection, so a leaked count
//!    makes the next input's `admit` fail);
//! 5. memory: the peak heap of one exec (counting global allocator) stays under `MEMORY_BOUND`.
//!
//! `CRBROKER_FUZZ_VERBOSE=1` prints which broker counters each input moved (how far it got);
//! `CRBROKER_FUZZ_REPORT_MEMORY=1` prints each new per-exec heap high-water mark.
//!
//! Accounts: `cpe1`/`secret` and `acs`/`acs-secret` (plaintext; `acs` is an ACS account),
//! `carol`/`carol-pw` (SCRAM-hashed, 4 iterations). Domain `broker.example`. Failed-login
//! delays never start (`login_delay_*_free` at their maximum): the failure tables would otherwise
//! carry state from one input to the next.

#![no_main]

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::Poll;
use std::time::Duration;

use crbroker::auth::{hash_line, AccountStore};
use crbroker::caps::{admit, ConnectionCaps};
use crbroker::config::{Config, ListenerKind};
use crbroker::context::{mechanism, Context, ListenerSettings};
use crbroker::ops::metrics::Stats;
use crbroker::pending::PendingTable;
use crbroker::router::Router;
use crbroker::session::c2s;
use crbroker::tls::Identity;
use libfuzzer_sys::fuzz_target;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWriteExt, DuplexStream, ReadBuf};
use tokio::sync::watch;

#[path = "../common/counting_alloc.rs"]
mod counting_alloc;

// ---------------------------------------------------------------------------------------------
// The broker side, built once per process.

const DOMAIN: &str = "broker.example";
/// Peak heap one exec may add (runtime, pipe buffers, TLS on both sides, framer, SASL). The
/// framer alone may hold ~24x `max_stanza_bytes` (16 KiB by default) in the worst case found so
/// far (fuzz/README.md), rustls up to a few 16 KiB records on each side.
const MEMORY_BOUND: usize = 2 << 20;
/// Virtual time after which an exec counts as hung.
const EXEC_BOUND: Duration = Duration::from_secs(600);
/// Each direction of the in-memory pipe holds this much before a writer waits.
const PIPE_BYTES: usize = 256 * 1024;
const PEER: &str = "192.0.2.7:40000";

struct Fixture {
    ctx: Arc<Context>,
    caps: Arc<ConnectionCaps>,
    starttls: Arc<ListenerSettings>,
    direct: Arc<ListenerSettings>,
    client_tls13: Arc<ClientConfig>,
    client_tls12: Arc<ClientConfig>,
    /// Kept so the shutdown signal never fires (a dropped sender would stop every session).
    _shutdown: watch::Sender<bool>,
}

fn config_text(dir: &std::path::Path) -> String {
    format!(
        r#"
[server]
domain = "{DOMAIN}"
[tls]
cert = "{cert}"
key = "{key}"
auto_create_dev_cert = true
[[listener]]
address = "127.0.0.1:0"
kind = "starttls"
[[listener]]
address = "127.0.0.1:0"
kind = "direct_tls"
[accounts]
acs = ["acs"]
[accounts.plain]
cpe1 = "secret"
acs = "acs-secret"
[limits]
login_delay_account_free = 4294967295
login_delay_address_free = 4294967295
max_pre_auth_per_ip = 1
max_pre_auth_total = 1
"#,
        cert = dir.join("cert.pem").display(),
        key = dir.join("key.pem").display(),
    )
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("crbroker-fuzz-unauth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let config = Config::parse(&config_text(&dir), "fuzz", dir.clone()).expect("config");
        // The dev-certificate path of the real broker: created on first load.
        let identity = Identity::load_or_create(&config).expect("identity");
        let cert_pem = std::fs::read(dir.join("cert.pem")).expect("cert");
        let _ = std::fs::remove_dir_all(&dir);

        let mut accounts =
            AccountStore::parse(&hash_line("carol", "carol-pw", 4), "fuzz").expect("scram line");
        for (user, password) in &config.accounts.plain {
            accounts
                .insert_plain(user, password.expose())
                .expect("account");
        }
        let stats = Arc::new(Stats::default());
        let requests = &config.requests;
        let router = Arc::new(Router::new(
            config.domain(),
            &config.accounts.acs,
            std::iter::empty(),
            PendingTable::new(
                Duration::from_millis(requests.timeout_ms),
                requests.max_pending_per_cpe,
                requests.max_pending_per_acs,
            ),
            stats.clone(),
        ));
        let (shutdown, shutdown_rx) = watch::channel(false);
        let ctx = Arc::new(Context::new(
            &config,
            router,
            Arc::new(crbroker::swap::Swap::new(Arc::new(
                crbroker::auth::Accounts::file_only(accounts),
            ))),
            stats,
            shutdown_rx,
        ));
        let caps = Arc::new(ConnectionCaps::new(
            config.limits.max_sessions,
            config.limits.max_pre_auth_per_ip,
            config.limits.max_pre_auth_total,
        ));
        let settings = |kind: ListenerKind| {
            let listener = config
                .listeners
                .iter()
                .find(|l| l.kind == kind)
                .expect("listener");
            Arc::new(ListenerSettings {
                kind,
                mechanisms: listener
                    .sasl_mechanisms
                    .iter()
                    .copied()
                    .map(mechanism)
                    .collect(),
                tls: identity
                    .server_config(&listener.tls_versions, config.tls.session_tickets, None)
                    .expect("server config"),
            })
        };
        let pinned = Arc::new(PinnedCert::from_pem(&cert_pem));
        Fixture {
            starttls: settings(ListenerKind::Starttls),
            direct: settings(ListenerKind::DirectTls),
            client_tls13: client_config(&pinned, false),
            client_tls12: client_config(&pinned, true),
            ctx,
            caps,
            _shutdown: shutdown,
        }
    })
}

// ---------------------------------------------------------------------------------------------
// The target's TLS client: trusts exactly the broker's certificate (signatures verified by ring).

#[derive(Debug)]
struct PinnedCert {
    der: CertificateDer<'static>,
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl PinnedCert {
    fn from_pem(pem: &[u8]) -> PinnedCert {
        use rustls::pki_types::pem::PemObject;
        PinnedCert {
            der: CertificateDer::from_pem_slice(pem).expect("certificate PEM"),
            algorithms: rustls::crypto::ring::default_provider().signature_verification_algorithms,
        }
    }
}

impl ServerCertVerifier for PinnedCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.der.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "not the broker's certificate".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

fn client_config(pinned: &Arc<PinnedCert>, tls12_only: bool) -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = if tls12_only {
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .expect("client versions")
        .dangerous()
        .with_custom_certificate_verifier(pinned.clone())
        .with_no_client_auth();
    Arc::new(config)
}

// ---------------------------------------------------------------------------------------------
// The input.

#[derive(Debug)]
struct Plan<'a> {
    mode: u8,
    tls12_only: bool,
    close_notify: bool,
    chunks: &'a [u8],
    payload: &'a [u8],
}

impl<'a> Plan<'a> {
    fn decode(data: &'a [u8]) -> Option<Plan<'a>> {
        let (&flags, rest) = data.split_first()?;
        let k = usize::from(flags >> 4).min(rest.len());
        let (chunks, payload) = rest.split_at(k);
        Some(Plan {
            mode: flags & 3,
            tls12_only: flags & 4 != 0,
            close_notify: flags & 8 != 0,
            chunks,
            payload,
        })
    }
}

/// Splits writes by the input's chunk sizes, cyclically (one chunk when there are none).
struct Chunker<'a> {
    sizes: &'a [u8],
    next: usize,
}

impl Chunker<'_> {
    fn take<'b>(&mut self, rest: &mut &'b [u8]) -> &'b [u8] {
        let size = match self.sizes.get(self.next % self.sizes.len().max(1)) {
            Some(&b) => usize::from(b) + 1,
            None => rest.len(),
        };
        self.next += 1;
        let (head, tail) = rest.split_at(size.min(rest.len()));
        *rest = tail;
        head
    }
}

// ---------------------------------------------------------------------------------------------
// The client side of the pipe.

/// Let the broker run until it waits for something (time is paused: the runtime advances the
/// clock only when every task is idle, so this 1 ms sleep ends once `serve` is blocked).
async fn settle() {
    tokio::time::sleep(Duration::from_millis(1)).await;
}

/// What one non-blocking read found.
enum Got {
    Bytes(usize),
    Nothing,
    Closed,
}

fn try_read<'a>(
    io: &'a mut DuplexStream,
    buf: &'a mut [u8],
) -> impl std::future::Future<Output = Got> + 'a {
    let mut io = Pin::new(io);
    let mut buf = ReadBuf::new(buf);
    std::future::poll_fn(move |cx| match io.as_mut().poll_read(cx, &mut buf) {
        Poll::Ready(Ok(())) if buf.filled().is_empty() => Poll::Ready(Got::Closed),
        Poll::Ready(Ok(())) => {
            let n = buf.filled().len();
            buf.clear();
            Poll::Ready(Got::Bytes(n))
        }
        Poll::Ready(Err(_)) => Poll::Ready(Got::Closed),
        Poll::Pending => Poll::Ready(Got::Nothing),
    })
}

/// The client end: the pipe and, in modes 2 and 3, the TLS client on it.
struct Client {
    io: DuplexStream,
    tls: Option<ClientConnection>,
    /// Plaintext the broker sent before TLS (mode 1 and 3), kept to find `<proceed/>`.
    seen: Vec<u8>,
    closed: bool,
}

const SEEN_MAX: usize = 4096;

impl Client {
    /// Read everything the broker has written so far: into the TLS client (whose plaintext is
    /// discarded) or, before TLS, into `seen`.
    async fn drain(&mut self) {
        let mut buf = [0u8; 8192];
        loop {
            let n = match try_read(&mut self.io, &mut buf).await {
                Got::Bytes(n) => n,
                Got::Nothing => return,
                Got::Closed => {
                    self.closed = true;
                    return;
                }
            };
            match &mut self.tls {
                Some(tls) => {
                    let mut rest = &buf[..n];
                    while !rest.is_empty() {
                        match tls.read_tls(&mut rest) {
                            Ok(0) | Err(_) => break,
                            Ok(_) => {}
                        }
                        if tls.process_new_packets().is_err() {
                            // The broker's bytes broke our client (e.g. after an injection):
                            // from here on everything the broker says is just discarded.
                            self.tls = None;
                            break;
                        }
                        let mut sink = [0u8; 4096];
                        while matches!(tls.reader().read(&mut sink), Ok(n) if n > 0) {}
                    }
                }
                None => {
                    let room = SEEN_MAX.saturating_sub(self.seen.len()).min(n);
                    self.seen.extend_from_slice(&buf[..room]);
                }
            }
        }
    }

    /// Write raw bytes, let the broker react, read its answer.
    async fn send_raw(&mut self, bytes: &[u8]) {
        if !bytes.is_empty() && self.io.write_all(bytes).await.is_err() {
            self.closed = true;
        }
        settle().await;
        self.drain().await;
    }

    /// Move the TLS client's pending records onto the wire.
    async fn flush_tls(&mut self) {
        let mut records = Vec::new();
        if let Some(tls) = &mut self.tls {
            while tls.wants_write() {
                if tls.write_tls(&mut records).is_err() {
                    break;
                }
            }
        }
        self.send_raw(&records).await;
    }

    /// Run the client handshake; false if it did not complete.
    async fn handshake(&mut self, config: &Arc<ClientConfig>) -> bool {
        let name = ServerName::try_from(DOMAIN).expect("server name");
        self.tls = ClientConnection::new(config.clone(), name).ok();
        // A TLS 1.3 or 1.2 handshake needs at most a few flights; bounded in case it stalls.
        for _ in 0..8 {
            self.flush_tls().await;
            match &self.tls {
                Some(tls) if !tls.is_handshaking() => return true,
                Some(_) if !self.closed => {}
                _ => return false,
            }
        }
        false
    }

    /// Application data through the TLS client; `0xFF n` + `n` bytes are injected raw.
    async fn send_app_data(&mut self, payload: &[u8], chunker: &mut Chunker<'_>) {
        let mut rest = payload;
        while !rest.is_empty() && !self.closed {
            let data_len = rest.iter().position(|&b| b == 0xFF).unwrap_or(rest.len());
            let (mut data, tail) = rest.split_at(data_len);
            while !data.is_empty() && !self.closed {
                let chunk = chunker.take(&mut data);
                if let Some(tls) = &mut self.tls {
                    let _ = tls.writer().write_all(chunk);
                }
                self.flush_tls().await;
            }
            rest = tail;
            if let [0xFF, n, after @ ..] = rest {
                let (raw, tail) = after.split_at(usize::from(*n).min(after.len()));
                self.send_raw(raw).await;
                rest = tail;
            } else if !rest.is_empty() {
                rest = &rest[1..];
            }
        }
    }

    async fn send_chunked_raw(&mut self, mut bytes: &[u8], chunker: &mut Chunker<'_>) {
        while !bytes.is_empty() && !self.closed {
            let chunk = chunker.take(&mut bytes);
            self.send_raw(chunk).await;
        }
    }

    fn proceeded(&self) -> bool {
        self.seen.windows(8).any(|w| w == b"<proceed")
    }
}

const STARTTLS_OPENING: &[u8] = b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
    xmlns:stream='http://etherx.jabber.org/streams' to='broker.example' version='1.0'>\
    <starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>";

/// Returns how far the client got, for `CRBROKER_FUZZ_VERBOSE`.
async fn drive(io: DuplexStream, plan: &Plan<'_>, fx: &Fixture) -> &'static str {
    let mut client = Client {
        io,
        tls: None,
        seen: Vec::new(),
        closed: false,
    };
    let mut chunker = Chunker {
        sizes: plan.chunks,
        next: 0,
    };
    let reached = match plan.mode {
        0 => {
            client.send_chunked_raw(plan.payload, &mut chunker).await;
            "raw bytes sent"
        }
        1 => {
            let split = plan.payload.iter().position(|&b| b == 0xFF);
            let (plain, raw) = match split {
                Some(i) => (&plan.payload[..i], &plan.payload[i + 1..]),
                None => (plan.payload, &[][..]),
            };
            client.send_chunked_raw(plain, &mut chunker).await;
            if client.proceeded() {
                client.send_chunked_raw(raw, &mut chunker).await;
                "proceed, raw TLS bytes sent"
            } else {
                "no proceed"
            }
        }
        _ => {
            if plan.mode == 3 {
                client.send_raw(STARTTLS_OPENING).await;
                if !client.proceeded() {
                    return "no proceed";
                }
            }
            let config = if plan.tls12_only {
                &fx.client_tls12
            } else {
                &fx.client_tls13
            };
            if client.handshake(config).await {
                client.send_app_data(plan.payload, &mut chunker).await;
                "handshake done, application data sent"
            } else {
                "handshake failed"
            }
        }
    };
    if plan.close_notify {
        if let Some(tls) = &mut client.tls {
            tls.send_close_notify();
        }
        client.flush_tls().await;
    }
    // Dropping the client end: the broker reads end of stream and must wind up.
    reached
}

// ---------------------------------------------------------------------------------------------

static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

fn check_nothing_left(fx: &Fixture) {
    let stats = &fx.ctx.stats;
    assert_eq!(fx.ctx.router.bound_clients(), 0, "a session stayed bound");
    assert_eq!(Stats::get(&stats.sessions_online), 0, "sessions_online");
    assert_eq!(Stats::get(&stats.connections_open), 0, "connections_open");
    assert!(fx.ctx.router.pending.is_empty(), "a request stayed pending");
}

fuzz_target!(|data: &[u8]| {
    let Some(plan) = Plan::decode(data) else {
        return;
    };
    let plan_len = data.len();
    let fx = fixture();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
    let peer: SocketAddr = PEER.parse().expect("peer address");
    let listener = match plan.mode {
        0 | 2 => fx.direct.clone(),
        _ => fx.starttls.clone(),
    };
    let verbose = std::env::var_os("CRBROKER_FUZZ_VERBOSE").is_some();
    let before = verbose.then(|| fx.ctx.stats.snapshot());
    let heap = counting_alloc::Measure::start();
    let reached = runtime.block_on(async {
        // The caps allow one pre-auth connection: a count the last exec leaked fails here.
        let guard = admit(peer, &fx.ctx.stats, &fx.caps).expect("pre-auth counters leaked");
        let (client_end, broker_end) = tokio::io::duplex(PIPE_BYTES);
        let conn_id = NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed);
        let accepted = tokio::time::Instant::now();
        let serve = c2s::serve(
            broker_end,
            peer,
            conn_id,
            listener,
            fx.ctx.clone(),
            guard,
            accepted,
        );
        let both = async { tokio::join!(serve, drive(client_end, &plan, fx)) };
        match tokio::time::timeout(EXEC_BOUND, both).await {
            Ok(((), reached)) => reached,
            Err(_) => panic!("serve did not return within {EXEC_BOUND:?} of virtual time"),
        }
    });
    drop(runtime);
    if let Some(before) = before {
        // Which counters this input moved: shows how far the negotiation got.
        let moved: Vec<String> = (fx.ctx.stats.snapshot().into_iter().zip(before))
            .filter(|((_, now), (_, then))| now != then)
            .map(|((name, now), (_, then))| format!("{name}{:+}", now as i64 - then as i64))
            .collect();
        eprintln!(
            "unauth: mode {} {plan_len} bytes: {reached}; {}",
            plan.mode,
            moved.join(" ")
        );
    }
    let peak = heap.peak();
    if std::env::var_os("CRBROKER_FUZZ_REPORT_MEMORY").is_some() {
        static HIGHEST: AtomicUsize = AtomicUsize::new(0);
        if peak > HIGHEST.fetch_max(peak, Ordering::Relaxed) {
            eprintln!(
                "unauth: new heap high-water mark {peak} bytes (mode {})",
                plan.mode
            );
        }
    }
    assert!(peak <= MEMORY_BOUND, "one exec held {peak} bytes of heap");
    check_nothing_left(fx);
});
