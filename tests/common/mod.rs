//! Test harness: a real broker on 127.0.0.1 ephemeral ports with a test CA, real XMPP peers
//! (tokio-xmpp client and component) and raw-socket peers for byte-level control.
#![allow(dead_code)]

use crbroker::config::{Config, ListenerKind};
use crbroker::xml::{ns, Element, Frame, Framer, FramerLimits};
use crbroker::Broker;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

pub mod binary;
pub mod nats;
pub mod openssl;
pub mod peers;
pub mod pg;
pub mod tls_peer;

pub const DOMAIN: &str = "example.net";
pub const COMPONENT_DOMAIN: &str = "acs.example.net";
pub const COMPONENT_SECRET: &str = "component-secret";
pub const ACS_USER: &str = "acs";
pub const ACS_PASSWORD: &str = "acs-password";
/// CPE accounts cpe-0000 .. cpe-{CPE_ACCOUNTS-1}, password `pw-<username>`.
pub const CPE_ACCOUNTS: usize = 64;
/// Bearer token of the /v1 API in the test config.
pub const API_TOKEN: &str = "test-token";
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

pub fn cpe_user(i: usize) -> String {
    format!("cpe-{i:04}")
}

pub fn cpe_password(user: &str) -> String {
    format!("pw-{user}")
}

/// Test PKI, created once per test process: a CA (trusted by tokio-xmpp through SSL_CERT_FILE and
/// by the raw clients directly) and a server certificate for DOMAIN signed by it.
pub struct TestPki {
    pub dir: PathBuf,
    pub ca_pem: String,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    /// The CA itself, to issue more server certificates (certificate rotation).
    ca: (rcgen::Certificate, rcgen::KeyPair),
}

impl TestPki {
    /// A new server certificate for DOMAIN signed by the test CA, written to `cert_path` and
    /// `key_path`. Returns the certificate's DER, the leaf a client will see.
    pub fn issue_server_certificate(&self, cert_path: &Path, key_path: &Path) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec![DOMAIN.to_string()]).unwrap();
        let cert = params.signed_by(&key, &self.ca.0, &self.ca.1).unwrap();
        std::fs::write(cert_path, cert.pem()).unwrap();
        std::fs::write(key_path, key.serialize_pem()).unwrap();
        cert.der().to_vec()
    }
}

pub fn pki() -> &'static TestPki {
    static PKI: OnceLock<TestPki> = OnceLock::new();
    PKI.get_or_init(|| {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let dir = std::env::temp_dir().join(format!("crbroker-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "crbroker test CA");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let server_key = KeyPair::generate().unwrap();
        let server_params = CertificateParams::new(vec![DOMAIN.to_string()]).unwrap();
        let server_cert = server_params
            .signed_by(&server_key, &ca_cert, &ca_key)
            .unwrap();
        let ca_path = dir.join("ca.pem");
        let cert_path = dir.join("cert.pem");
        let key_path = dir.join("key.pem");
        std::fs::write(&ca_path, ca_cert.pem()).unwrap();
        std::fs::write(&cert_path, server_cert.pem()).unwrap();
        std::fs::write(&key_path, server_key.serialize_pem()).unwrap();
        // tokio-xmpp's client reads its trust roots (rustls-native-certs) from SSL_CERT_FILE.
        // Set once, before any client exists; std's env lock serialises it with readers.
        unsafe_set_env("SSL_CERT_FILE", &ca_path);
        TestPki {
            dir,
            ca_pem: ca_cert.pem(),
            cert_path,
            key_path,
            ca: (ca_cert, ca_key),
        }
    })
}

#[allow(unused_unsafe)]
fn unsafe_set_env(key: &str, value: &std::path::Path) {
    // Edition 2021: set_var is safe to call; the harness calls it exactly once per process.
    unsafe { std::env::set_var(key, value) }
}

/// Knobs the tests turn; everything else is the documented default.
#[derive(Clone)]
pub struct TestOptions {
    pub request_timeout_ms: u64,
    pub max_pending_per_cpe: usize,
    pub max_pending_per_acs: usize,
    pub outbox_stanzas: usize,
    pub stuck_session_grace_secs: u64,
    pub pre_auth_timeout_secs: u64,
    pub max_stanza_bytes: usize,
    pub login_delay_base_ms: u64,
    pub login_delay_account_free: u32,
    pub login_delay_account_max_ms: u64,
    pub login_delay_address_free: u32,
    pub login_delay_address_max_ms: u64,
    pub sasl_failure_floor_ms: u64,
    pub shutdown_timeout_secs: u64,
    pub max_pre_auth_per_ip: usize,
    pub max_sessions: usize,
    pub cpe_to_acs_burst: u32,
    pub acs_outbox_answer_bytes: usize,
}

impl Default for TestOptions {
    fn default() -> Self {
        TestOptions {
            request_timeout_ms: 10_000,
            max_pending_per_cpe: 4,
            max_pending_per_acs: 100_000,
            outbox_stanzas: 64,
            stuck_session_grace_secs: 30,
            pre_auth_timeout_secs: 20,
            max_stanza_bytes: 16384,
            login_delay_base_ms: 250,
            login_delay_account_free: 3,
            login_delay_account_max_ms: 2000,
            login_delay_address_free: 20,
            login_delay_address_max_ms: 8000,
            sasl_failure_floor_ms: 200,
            shutdown_timeout_secs: 5,
            max_pre_auth_per_ip: 0,
            max_sessions: 0,
            cpe_to_acs_burst: 10,
            acs_outbox_answer_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Listener indexes in the test config.
pub const STARTTLS: usize = 0;
pub const DIRECT_TLS: usize = 1;
/// STARTTLS, TLS 1.2 only, SCRAM-SHA-1 only (tokio-xmpp does plain SCRAM only without TLS 1.3).
pub const SCRAM_SHA1_TLS12: usize = 2;
/// STARTTLS, TLS 1.2 only, SCRAM-SHA-256 only.
pub const SCRAM_SHA256_TLS12: usize = 3;

pub fn config_text(options: &TestOptions) -> String {
    let pki = pki();
    let mut accounts = String::new();
    for i in 0..CPE_ACCOUNTS {
        let user = cpe_user(i);
        accounts.push_str(&format!("{user} = \"{}\"\n", cpe_password(&user)));
    }
    format!(
        r#"
[server]
domain = "{DOMAIN}"
shutdown_timeout_secs = {shutdown}

[tls]
cert = "{cert}"
key = "{key}"

[[listener]]
address = "127.0.0.1:0"
kind = "starttls"

[[listener]]
address = "127.0.0.1:0"
kind = "direct_tls"

[[listener]]
address = "127.0.0.1:0"
kind = "starttls"
sasl_mechanisms = ["SCRAM-SHA-1"]
tls_versions = ["1.2"]

[[listener]]
address = "127.0.0.1:0"
kind = "starttls"
sasl_mechanisms = ["SCRAM-SHA-256"]
tls_versions = ["1.2"]

[component_listener]
address = "127.0.0.1:0"

[[component]]
domain = "{COMPONENT_DOMAIN}"
secret = "{COMPONENT_SECRET}"

[accounts]
acs = ["{ACS_USER}"]

[accounts.plain]
{ACS_USER} = "{ACS_PASSWORD}"
{accounts}

[limits]
max_stanza_bytes = {max_stanza}
pre_auth_timeout_secs = {pre_auth}
outbox_stanzas = {outbox}
stuck_session_grace_secs = {grace}
login_delay_base_ms = {delay_base}
login_delay_account_free = {account_free}
login_delay_account_max_ms = {account_max}
login_delay_address_free = {address_free}
login_delay_address_max_ms = {address_max}
sasl_failure_floor_ms = {failure_floor}
max_pre_auth_per_ip = {per_ip}
max_sessions = {max_sessions}
cpe_to_acs_burst = {burst}
acs_outbox_answer_bytes = {answer_bytes}

[requests]
timeout_ms = {timeout}
max_pending_per_cpe = {per_cpe}
max_pending_per_acs = {per_acs}

[ops]
# Any free port: tests read the bound one from Broker::ops_addr (never 5280).
address = "127.0.0.1:0"
api_tokens = ["{API_TOKEN}"]
"#,
        shutdown = options.shutdown_timeout_secs,
        cert = pki.cert_path.display(),
        key = pki.key_path.display(),
        max_stanza = options.max_stanza_bytes,
        pre_auth = options.pre_auth_timeout_secs,
        outbox = options.outbox_stanzas,
        grace = options.stuck_session_grace_secs,
        delay_base = options.login_delay_base_ms,
        account_free = options.login_delay_account_free,
        account_max = options.login_delay_account_max_ms,
        address_free = options.login_delay_address_free,
        address_max = options.login_delay_address_max_ms,
        failure_floor = options.sasl_failure_floor_ms,
        per_ip = options.max_pre_auth_per_ip,
        max_sessions = options.max_sessions,
        burst = options.cpe_to_acs_burst,
        answer_bytes = options.acs_outbox_answer_bytes,
        timeout = options.request_timeout_ms,
        per_cpe = options.max_pending_per_cpe,
        per_acs = options.max_pending_per_acs,
    )
}

pub struct TestBroker {
    pub broker: Option<Broker>,
    pub c2s: Vec<std::net::SocketAddr>,
    pub component: std::net::SocketAddr,
    /// The ops HTTP listener (`/metrics`, `/healthz`, `/readyz`).
    pub ops: std::net::SocketAddr,
    pub stats: Arc<crbroker::ops::metrics::Stats>,
}

impl TestBroker {
    pub async fn start() -> TestBroker {
        TestBroker::start_with(TestOptions::default()).await
    }

    pub async fn start_with(options: TestOptions) -> TestBroker {
        let text = config_text(&options);
        let config =
            Config::parse(&text, "test-config.toml", pki().dir.clone()).expect("test config");
        TestBroker::start_config(config).await
    }

    /// A broker on a configuration file (which `Broker::reload` reads again).
    pub async fn start_file(path: &Path) -> TestBroker {
        TestBroker::start_config(Config::load(path).expect("test config")).await
    }

    pub async fn start_config(config: Config) -> TestBroker {
        init_logging();
        let broker = Broker::start(config).await.expect("broker starts");
        let c2s = broker.c2s_addrs.iter().map(|(_, a)| *a).collect();
        TestBroker {
            component: broker.component_addr.expect("component listener"),
            ops: broker.ops_addr().expect("ops listener"),
            stats: broker.stats.clone(),
            c2s,
            broker: Some(broker),
        }
    }

    pub fn addr(&self, listener: usize) -> std::net::SocketAddr {
        self.c2s[listener]
    }

    pub fn stat(&self, name: &str) -> u64 {
        self.stats
            .snapshot()
            .into_iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("no counter {name}"))
            .1
    }

    pub async fn shutdown(mut self) {
        if let Some(broker) = self.broker.take() {
            broker.shutdown().await;
        }
    }

    /// A raw CPE logged in on the STARTTLS listener as `user` (password `pw-<user>`), resource `cwmp`.
    pub async fn cpe(&self, user: &str) -> (RawPeer, String) {
        RawPeer::login(self.addr(STARTTLS), user, &cpe_password(user), Some("cwmp")).await
    }

    /// A raw XEP-0114 component for the ACS domain, handshaken.
    pub async fn raw_acs(&self) -> RawPeer {
        let mut acs = RawPeer::component(self.component, COMPONENT_DOMAIN, COMPONENT_SECRET).await;
        acs.expect_handshake_ok().await;
        acs
    }

    pub fn kind_addr(&self, kind: ListenerKind) -> std::net::SocketAddr {
        self.broker.as_ref().unwrap().c2s_addr(kind).unwrap()
    }
}

fn init_logging() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_env("CRBROKER_TEST_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    });
}

// ---------------------------------------------------------------------------------------------
// Raw peers: byte-level control, answers parsed with the crate's framer.

pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

pub fn tls_connector() -> tokio_rustls::TlsConnector {
    tokio_rustls::TlsConnector::from(tls_peer::rustls_config())
}

pub struct RawPeer {
    io: Box<dyn Io>,
    framer: Framer,
    buf: Vec<u8>,
    pos: usize,
    content_ns: &'static str,
    /// Everything received, as text, for assertions on exact bytes.
    pub transcript: String,
}

pub const CLIENT_HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='example.net' version='1.0'>";

impl RawPeer {
    pub fn new(io: Box<dyn Io>, content_ns: &'static str) -> RawPeer {
        RawPeer {
            io,
            framer: Framer::new(
                FramerLimits {
                    max_stanza_bytes: 1 << 20,
                    ..FramerLimits::default()
                },
                content_ns,
            ),
            buf: Vec::new(),
            pos: 0,
            content_ns,
            transcript: String::new(),
        }
    }

    /// Raw peers reset their connection (RST, SO_LINGER 0) when dropped, like a CPE losing power.
    pub async fn tcp(addr: std::net::SocketAddr) -> RawPeer {
        let tcp = connect_resetting(addr).await;
        RawPeer::new(Box::new(tcp), ns::CLIENT)
    }

    /// A plain client stream on `io` (a connection the test set up) that has sent its stream
    /// header and got the broker's header and features: admitted and waiting for STARTTLS.
    pub async fn greeted(io: Box<dyn Io>) -> RawPeer {
        let mut peer = RawPeer::new(io, ns::CLIENT);
        peer.send(CLIENT_HEADER).await;
        peer.header().await;
        peer.element().await;
        peer
    }

    pub async fn direct_tls(addr: std::net::SocketAddr) -> RawPeer {
        let tcp = connect_resetting(addr).await;
        let name = rustls::pki_types::ServerName::try_from(DOMAIN).unwrap();
        let tls = tls_connector().connect(name, tcp).await.unwrap();
        RawPeer::new(Box::new(tls), ns::CLIENT)
    }

    pub async fn send(&mut self, text: &str) {
        self.io.write_all(text.as_bytes()).await.unwrap();
        self.io.flush().await.unwrap();
    }

    /// Send, tolerating a peer that already closed.
    pub async fn try_send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.io.write_all(bytes).await?;
        self.io.flush().await
    }

    /// The next frame, or None when the connection closed (EOF/reset) first.
    pub async fn next_frame(&mut self) -> Option<Frame> {
        loop {
            if self.pos < self.buf.len() {
                let mut input = &self.buf[self.pos..];
                let before = input.len();
                let frame = self
                    .framer
                    .next_frame(&mut input)
                    .expect("broker sent well-formed XML");
                self.pos += before - input.len();
                if let Some(frame) = frame {
                    return Some(frame);
                }
            }
            let mut chunk = [0u8; 8192];
            let n = match tokio::time::timeout(IO_TIMEOUT, self.io.read(&mut chunk)).await {
                Err(_) => panic!(
                    "no data from the broker within {IO_TIMEOUT:?}; so far: {}",
                    self.transcript
                ),
                Ok(Err(_)) | Ok(Ok(0)) => return None,
                Ok(Ok(n)) => n,
            };
            self.transcript
                .push_str(&String::from_utf8_lossy(&chunk[..n]));
            self.buf.drain(..self.pos);
            self.pos = 0;
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    pub async fn element(&mut self) -> Element {
        match self.next_frame().await {
            Some(Frame::Stanza(e)) => e,
            other => panic!(
                "expected an element, got {other:?}; transcript: {}",
                self.transcript
            ),
        }
    }

    /// Expect the stream header; returns it.
    pub async fn header(&mut self) -> crbroker::xml::StreamHeader {
        match self.next_frame().await {
            Some(Frame::StreamOpen(h)) => h,
            other => panic!(
                "expected a stream header, got {other:?}; transcript: {}",
                self.transcript
            ),
        }
    }

    /// Expect a stream error with `condition` and the stream's end.
    pub async fn expect_stream_error(&mut self, condition: &str) {
        loop {
            match self.next_frame().await {
                Some(Frame::StreamOpen(_)) => continue,
                Some(Frame::Stanza(e)) if e.name == "features" && e.ns == ns::STREAM => continue,
                Some(Frame::Stanza(e)) if e.name == "error" && e.ns == ns::STREAM => {
                    let first = e.first_child().expect("condition");
                    assert_eq!(first.name, condition, "transcript: {}", self.transcript);
                    assert_eq!(first.ns, ns::STREAMS);
                    break;
                }
                other => panic!(
                    "expected stream error {condition}, got {other:?}; transcript: {}",
                    self.transcript
                ),
            }
        }
        // Then the stream ends and the connection closes.
        match self.next_frame().await {
            Some(Frame::StreamClose) | None => {}
            other => panic!("expected end of stream, got {other:?}"),
        }
    }

    /// True when the connection is closed by the broker within the timeout.
    pub async fn closed(&mut self) -> bool {
        loop {
            match self.next_frame().await {
                None => return true,
                Some(_) => continue,
            }
        }
    }

    /// STARTTLS on a plain TCP peer: header, features, proceed, TLS handshake.
    pub async fn starttls(self) -> RawPeer {
        self.starttls_with(tls_connector()).await.unwrap()
    }

    /// STARTTLS with the test's own TLS client (e.g. one presenting a client certificate);
    /// the handshake's error when it fails.
    pub async fn starttls_with(
        mut self,
        connector: tokio_rustls::TlsConnector,
    ) -> std::io::Result<RawPeer> {
        self.send(CLIENT_HEADER).await;
        self.header().await;
        let features = self.element().await;
        assert!(features.child("starttls", ns::TLS).is_some());
        self.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            .await;
        let proceed = self.element().await;
        assert!(proceed.is("proceed", ns::TLS));
        let name = rustls::pki_types::ServerName::try_from(DOMAIN).unwrap();
        // Reassemble the stream: nothing may be buffered beyond <proceed/>.
        assert_eq!(self.pos, self.buf.len(), "bytes after <proceed/>");
        let io = self.io;
        let tls = connector.connect(name, io).await?;
        Ok(RawPeer::new(Box::new(tls), ns::CLIENT))
    }

    /// After TLS: header, SASL PLAIN. Returns the features element offered before auth.
    pub async fn auth_plain(&mut self, user: &str, password: &str) -> Result<Element, String> {
        self.send(CLIENT_HEADER).await;
        self.header().await;
        let features = self.element().await;
        let payload = base64_encode(format!("\0{user}\0{password}").as_bytes());
        self.send(&format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{payload}</auth>"
        ))
        .await;
        let answer = self.element().await;
        if answer.is("success", ns::SASL) {
            Ok(features)
        } else {
            Err(answer
                .first_child()
                .map(|c| c.name.clone())
                .unwrap_or_default())
        }
    }

    /// After SASL success: restart, bind `resource` (or none). Returns the bound JID.
    pub async fn bind(&mut self, resource: Option<&str>) -> String {
        self.send(CLIENT_HEADER).await;
        self.bind_after_header(resource).await
    }

    /// After SASL success, the new stream header already sent: bind. Returns the bound JID.
    pub async fn bind_after_header(&mut self, resource: Option<&str>) -> String {
        self.framer = Framer::new(
            FramerLimits {
                max_stanza_bytes: 1 << 20,
                ..FramerLimits::default()
            },
            self.content_ns,
        );
        self.header().await;
        let features = self.element().await;
        assert!(features.child("bind", ns::BIND).is_some());
        let resource = resource
            .map(|r| format!("<resource>{r}</resource>"))
            .unwrap_or_default();
        self.send(&format!("<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>{resource}</bind></iq>")).await;
        let reply = self.element().await;
        assert_eq!(reply.attr("type"), Some("result"), "{}", self.transcript);
        reply
            .child("bind", ns::BIND)
            .unwrap()
            .child("jid", ns::BIND)
            .unwrap()
            .text()
    }

    /// A logged-in CPE (STARTTLS + PLAIN + bind) on listener `addr`.
    pub async fn login(
        addr: std::net::SocketAddr,
        user: &str,
        password: &str,
        resource: Option<&str>,
    ) -> (RawPeer, String) {
        let mut peer = RawPeer::tcp(addr).await.starttls().await;
        peer.auth_plain(user, password)
            .await
            .expect("login succeeds");
        let jid = peer.bind(resource).await;
        (peer, jid)
    }

    /// A raw XEP-0114 component, handshaken.
    pub async fn component(addr: std::net::SocketAddr, domain: &str, secret: &str) -> RawPeer {
        RawPeer::component_on(connect_resetting(addr).await, domain, secret).await
    }

    /// A raw XEP-0114 component on a connection the test set up, handshaken.
    pub async fn component_on(tcp: TcpStream, domain: &str, secret: &str) -> RawPeer {
        let mut peer = RawPeer::new(Box::new(tcp), ns::COMPONENT);
        peer.send(&format!("<stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams' to='{domain}'>")).await;
        let header = peer.header().await;
        let id = header_id(&peer.transcript);
        let digest = crbroker::proto::component::handshake_digest(&id, secret);
        peer.send(&format!("<handshake>{digest}</handshake>")).await;
        let _ = header;
        peer
    }

    /// Wait for the handshake answer of a raw component.
    pub async fn expect_handshake_ok(&mut self) {
        let reply = self.element().await;
        assert!(reply.is("handshake", ""), "{}", self.transcript);
    }
}

pub async fn connect_resetting(addr: std::net::SocketAddr) -> TcpStream {
    let tcp = TcpStream::connect(addr).await.unwrap();
    #[allow(deprecated)]
    tcp.set_linger(Some(Duration::ZERO)).unwrap();
    tcp
}

/// The `id` attribute of the first stream header in a transcript.
pub fn header_id(transcript: &str) -> String {
    let start = transcript.find(" id='").expect("header id") + 5;
    let end = transcript[start..].find('\'').unwrap();
    transcript[start..start + end].to_string()
}

pub fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A connection request as an ACS sends it.
pub fn connection_request(
    id: &str,
    to: &str,
    from: Option<&str>,
    user: &str,
    password: &str,
) -> String {
    let from = from.map(|f| format!(" from='{f}'")).unwrap_or_default();
    format!(
        "<iq type='get' id='{id}' to='{to}'{from}><connectionRequest xmlns='urn:broadband-forum-org:cwmp:xmppConnReq-1-0'><username>{user}</username><password>{password}</password></connectionRequest></iq>"
    )
}

/// A CPE's `result` answer to the request the broker sent it as `wire_id`.
pub async fn answer_result(cpe: &mut RawPeer, wire_id: &str) {
    cpe.send(&format!(
        "<iq type='result' id='{wire_id}' to='{COMPONENT_DOMAIN}'/>"
    ))
    .await;
}

/// A connection request from the raw ACS component `acs` to `jid`, delivered to the raw CPE
/// `cpe` and answered `result` by it; returns the answer the ACS got.
pub async fn request_answered(
    acs: &mut RawPeer,
    cpe: &mut RawPeer,
    id: &str,
    jid: &str,
) -> Element {
    acs.send(&connection_request(
        id,
        jid,
        Some(COMPONENT_DOMAIN),
        "u",
        "p",
    ))
    .await;
    let request = cpe.element().await;
    assert!(
        request.child("connectionRequest", ns::CONN_REQ).is_some(),
        "{}",
        cpe.transcript
    );
    answer_result(cpe, request.attr("id").unwrap()).await;
    acs.element().await
}

/// The first stanza-error condition of an IQ error.
pub fn error_condition(iq: &Element) -> Option<String> {
    let error = iq.child_elements().find(|e| e.name == "error")?;
    error.first_child().map(|c| c.name.clone())
}

/// Wait until `f` holds (polling), or panic after the timeout.
pub async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + IO_TIMEOUT;
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
