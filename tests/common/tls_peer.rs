//! TLS peers for tests/tls.rs, all over real sockets:
//! - `TextPeer`: XMPP as plain text over any byte stream (a rustls client stream, or openssl's
//!   stdout/stdin, which also carry openssl's own chatter, so matching is by substring);
//! - `CorkedTcp`: TCP that holds the client's writes back, to send several records in one write;
//! - `RecordPeer`: an attacker record layer. A rustls client (TLS 1.3, AES-128-GCM only, secret
//!   extraction on) does the handshake and the XMPP login, then hands over its traffic keys and
//!   sequence numbers; the test seals and opens TLS 1.3 records itself with ring, so it can send
//!   what no honest client sends (empty runs, oversized records, alerts) and see every record the
//!   broker answers with, alerts included.

use super::*;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM};
use rustls::client::ClientConnection;
use rustls::ConnectionTrafficSecrets;
use tokio_rustls::client::TlsStream;

pub const CONTENT_ALERT: u8 = 21;
pub const CONTENT_APPLICATION_DATA: u8 = 23;
pub const ALERT_WARNING: u8 = 1;
pub const ALERT_FATAL: u8 = 2;
pub const ALERT_RECORD_OVERFLOW: u8 = 22;
pub const ALERT_HANDSHAKE_FAILURE: u8 = 40;
pub const ALERT_DECODE_ERROR: u8 = 50;
/// RFC 8446 5.2: a TLSCiphertext fragment is at most 2^14 + 256 bytes.
pub const MAX_TLS13_CIPHERTEXT: usize = (1 << 14) + 256;

/// The test CA as a rustls root store.
pub fn test_roots() -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pki().ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    roots
}

/// A rustls client config for the attacker: TLS 1.3 with TLS13_AES_128_GCM_SHA256 only, so the
/// extracted secrets are always AES-128-GCM keys, and secret extraction enabled.
pub fn extracting_config() -> Arc<rustls::ClientConfig> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = vec![rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256];
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(test_roots())
        .with_no_client_auth();
    config.enable_secret_extraction = true;
    Arc::new(config)
}

// ---------------------------------------------------------------------------------------------
// XMPP as text.

/// XMPP spoken as text over a byte stream; what arrives is matched by substring.
pub struct TextPeer<S> {
    pub io: S,
    /// Everything received, for assertions and failure messages.
    pub text: String,
    cursor: usize,
}

impl<S: AsyncRead + AsyncWrite + Unpin> TextPeer<S> {
    pub fn new(io: S) -> TextPeer<S> {
        TextPeer {
            io,
            text: String::new(),
            cursor: 0,
        }
    }

    pub async fn send(&mut self, text: &str) {
        self.io.write_all(text.as_bytes()).await.unwrap();
        self.io.flush().await.unwrap();
    }

    /// Read until `pattern` arrives; returns what arrived up to and including it.
    pub async fn expect(&mut self, pattern: &str) -> String {
        loop {
            if let Some(at) = self.text[self.cursor..].find(pattern) {
                let end = self.cursor + at + pattern.len();
                let got = self.text[self.cursor..end].to_string();
                self.cursor = end;
                return got;
            }
            match self.read_some().await {
                Ok(0) => panic!("stream ended before `{pattern}`; received: {}", self.text),
                Err(e) => panic!("{e} before `{pattern}`; received: {}", self.text),
                Ok(_) => {}
            }
        }
    }

    /// Read until the stream ends: Ok on a clean end (for a rustls stream: close_notify
    /// received), the error otherwise (for a rustls stream: EOF without close_notify).
    pub async fn end(&mut self) -> std::io::Result<()> {
        loop {
            if self.read_some().await? == 0 {
                return Ok(());
            }
        }
    }

    async fn read_some(&mut self) -> std::io::Result<usize> {
        let mut chunk = [0u8; 8192];
        let n = tokio::time::timeout(IO_TIMEOUT, self.io.read(&mut chunk))
            .await
            .unwrap_or_else(|_| panic!("nothing within {IO_TIMEOUT:?}; got: {}", self.text))?;
        self.text.push_str(&String::from_utf8_lossy(&chunk[..n]));
        Ok(n)
    }

    /// After TLS: stream header, SASL PLAIN as `user`, restart, bind resource `cwmp`.
    /// Returns the bound JID. Sends no whitespace between stanzas.
    pub async fn login(&mut self, user: &str) -> String {
        self.send(CLIENT_HEADER).await;
        self.expect("</stream:features>").await;
        let payload = base64_encode(format!("\0{user}\0{}", cpe_password(user)).as_bytes());
        self.send(&format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{payload}</auth>"
        ))
        .await;
        self.expect("<success").await;
        self.send(CLIENT_HEADER).await;
        self.expect("</stream:features>").await;
        self.send("<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>cwmp</resource></bind></iq>").await;
        let reply = self.expect("</iq>").await;
        between(&reply, "<jid>", "</jid>").to_string()
    }

    /// Wait for a connection request and answer it with a result; returns the broker's id.
    pub async fn answer_request(&mut self) -> String {
        let received = self.expect("</iq>").await;
        let iq = &received[received.rfind("<iq ").expect("an iq")..];
        assert!(iq.contains("connectionRequest"), "not a request: {iq}");
        let id = attr_value(iq, "id");
        self.send(&format!(
            "<iq type='result' id='{id}' to='{COMPONENT_DOMAIN}'/>"
        ))
        .await;
        id
    }
}

/// The text between the first `start` and the next `end`.
pub fn between<'a>(text: &'a str, start: &str, end: &str) -> &'a str {
    let from = text
        .find(start)
        .unwrap_or_else(|| panic!("no {start} in {text}"))
        + start.len();
    let to = text[from..]
        .find(end)
        .unwrap_or_else(|| panic!("no {end} in {text}"));
    &text[from..from + to]
}

/// The value of attribute `name` in the first tag of `tag` (either quote style).
pub fn attr_value(tag: &str, name: &str) -> String {
    let open = &tag[..tag.find('>').unwrap_or(tag.len())];
    for quote in ['\'', '"'] {
        let key = format!(" {name}={quote}");
        if let Some(at) = open.find(&key) {
            let rest = &open[at + key.len()..];
            return rest[..rest.find(quote).unwrap()].to_string();
        }
    }
    panic!("no attribute {name} in {open}")
}

/// A plain TCP connection to a STARTTLS listener taken up to `<proceed/>`, ready for TLS.
pub async fn starttls_tcp(addr: std::net::SocketAddr) -> TcpStream {
    let mut plain = TextPeer::new(connect_resetting(addr).await);
    plain.send(CLIENT_HEADER).await;
    plain.expect("</stream:features>").await;
    plain
        .send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        .await;
    plain.expect("<proceed").await;
    plain.expect("/>").await;
    assert_eq!(plain.cursor, plain.text.len(), "bytes after <proceed/>");
    plain.io
}

/// TCP to `addr`, through STARTTLS first when `starttls`.
pub async fn tcp_for_tls(addr: std::net::SocketAddr, starttls: bool) -> TcpStream {
    if starttls {
        starttls_tcp(addr).await
    } else {
        connect_resetting(addr).await
    }
}

/// A CPE logged in over rustls with `config` (direct TLS, or STARTTLS when `starttls`).
pub async fn rustls_cpe(
    addr: std::net::SocketAddr,
    starttls: bool,
    config: Arc<rustls::ClientConfig>,
    user: &str,
) -> (TextPeer<TlsStream<TcpStream>>, String) {
    let tcp = tcp_for_tls(addr, starttls).await;
    let name = rustls::pki_types::ServerName::try_from(DOMAIN).unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .expect("TLS handshake");
    let mut peer = TextPeer::new(tls);
    let jid = peer.login(user).await;
    (peer, jid)
}

/// TCP that, once the server has sent something, holds back what the client writes until
/// `uncork`: records the TLS client writes one after the other then leave in one write (the
/// client's Finished with a KeyUpdate right behind it, for example).
pub struct CorkedTcp {
    tcp: TcpStream,
    server_spoke: bool,
    held: Option<Vec<u8>>,
}

impl CorkedTcp {
    pub fn new(tcp: TcpStream) -> CorkedTcp {
        CorkedTcp {
            tcp,
            server_spoke: false,
            held: Some(Vec::new()),
        }
    }

    /// Send everything held, in one write; from now on writes go straight out.
    pub async fn uncork(&mut self) -> std::io::Result<()> {
        let held = self.held.take().unwrap_or_default();
        assert!(!held.is_empty(), "nothing was held back");
        self.tcp.write_all(&held).await
    }
}

impl AsyncRead for CorkedTcp {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = std::pin::Pin::new(&mut self.tcp).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.server_spoke = true;
        }
        poll
    }
}

impl AsyncWrite for CorkedTcp {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = &mut *self;
        match (&mut this.held, this.server_spoke) {
            (Some(held), true) => {
                held.extend_from_slice(data);
                std::task::Poll::Ready(Ok(data.len()))
            }
            _ => std::pin::Pin::new(&mut this.tcp).poll_write(cx, data),
        }
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

// ---------------------------------------------------------------------------------------------
// The attacker record layer.

/// One direction's AES-128-GCM key, static IV and record sequence number (RFC 8446 5.3).
struct Direction {
    key: LessSafeKey,
    iv: [u8; 12],
    seq: u64,
}

impl Direction {
    fn new((seq, secrets): (u64, ConnectionTrafficSecrets)) -> Direction {
        let ConnectionTrafficSecrets::Aes128Gcm { key, iv } = secrets else {
            panic!("the attacker config offers AES-128-GCM only");
        };
        Direction {
            key: LessSafeKey::new(UnboundKey::new(&AES_128_GCM, key.as_ref()).unwrap()),
            iv: iv.as_ref().try_into().unwrap(),
            seq,
        }
    }

    /// The per-record nonce: the static IV xor the sequence number; advances the sequence.
    fn next_nonce(&mut self) -> Nonce {
        let mut nonce = self.iv;
        for (byte, seq) in nonce[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *byte ^= seq;
        }
        self.seq += 1;
        Nonce::assume_unique_for_key(nonce)
    }
}

/// What the broker sent, one record at a time.
#[derive(Debug, PartialEq)]
pub enum Received {
    /// A record: its inner content type (TLS 1.3, after decryption) and content.
    Record(u8, Vec<u8>),
    /// The broker closed the TCP connection (FIN) at a record boundary.
    Eof,
    /// The connection failed (e.g. reset) instead.
    Failed(std::io::ErrorKind),
}

pub struct RecordPeer {
    tcp: TcpStream,
    tx: Direction,
    rx: Direction,
    input: Vec<u8>,
}

impl RecordPeer {
    /// A CPE logged in as `user` over TLS 1.3 (direct TLS, or STARTTLS when `starttls`), then
    /// taken over by the test's own record layer.
    pub async fn login(addr: std::net::SocketAddr, starttls: bool, user: &str) -> (Self, String) {
        let (peer, jid) = rustls_cpe(addr, starttls, extracting_config(), user).await;
        assert_eq!(peer.cursor, peer.text.len(), "unread data at the hand-over");
        let (tcp, connection): (TcpStream, ClientConnection) = peer.io.into_inner();
        let secrets = connection
            .dangerous_extract_secrets()
            .expect("secrets extracted");
        let peer = RecordPeer {
            tcp,
            tx: Direction::new(secrets.tx),
            rx: Direction::new(secrets.rx),
            input: Vec::new(),
        };
        (peer, jid)
    }

    /// One TLS 1.3 record: `content`, then the inner content type, then `padding` zero bytes,
    /// sealed under the next sequence number.
    pub fn seal(&mut self, inner_type: u8, content: &[u8], padding: usize) -> Vec<u8> {
        let plain_len = content.len() + 1 + padding;
        let len = plain_len + AES_128_GCM.tag_len();
        let header = [CONTENT_APPLICATION_DATA, 3, 3, (len >> 8) as u8, len as u8];
        let mut body = Vec::with_capacity(len);
        body.extend_from_slice(content);
        body.push(inner_type);
        body.resize(plain_len, 0);
        let nonce = self.tx.next_nonce();
        self.tx
            .key
            .seal_in_place_append_tag(nonce, Aad::from(header), &mut body)
            .unwrap();
        let mut record = header.to_vec();
        record.extend_from_slice(&body);
        record
    }

    /// Raw bytes onto the socket; the error if the broker has already gone.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.tcp.write_all(bytes).await?;
        self.tcp.flush().await
    }

    /// Close the TCP write side (FIN) without any alert.
    pub async fn send_fin(&mut self) {
        self.tcp.shutdown().await.unwrap();
    }

    /// XMPP text in one application-data record.
    pub async fn send_text(&mut self, text: &str) {
        let record = self.seal(CONTENT_APPLICATION_DATA, text.as_bytes(), 0);
        self.send_raw(&record).await.unwrap();
    }

    /// The next record from the broker, decrypted, or the end of the connection.
    pub async fn next_record(&mut self) -> Received {
        loop {
            if self.input.len() >= 5 {
                let len = u16::from_be_bytes([self.input[3], self.input[4]]) as usize;
                if self.input.len() >= 5 + len {
                    let header: [u8; 5] = self.input[..5].try_into().unwrap();
                    let mut body = self.input[5..5 + len].to_vec();
                    self.input.drain(..5 + len);
                    assert_eq!(
                        header[0], CONTENT_APPLICATION_DATA,
                        "after the handshake every TLS 1.3 record is protected: {header:?}"
                    );
                    let nonce = self.rx.next_nonce();
                    let plain = self
                        .rx
                        .key
                        .open_in_place(nonce, Aad::from(header), &mut body)
                        .expect("the broker's record decrypts");
                    let end = plain.iter().rposition(|b| *b != 0).expect("content type");
                    return Received::Record(plain[end], plain[..end].to_vec());
                }
            }
            let mut chunk = [0u8; 16384];
            match tokio::time::timeout(IO_TIMEOUT, self.tcp.read(&mut chunk)).await {
                Err(_) => panic!("no record from the broker within {IO_TIMEOUT:?}"),
                Ok(Ok(0)) => {
                    assert!(self.input.is_empty(), "EOF inside a record");
                    return Received::Eof;
                }
                Ok(Ok(n)) => self.input.extend_from_slice(&chunk[..n]),
                Ok(Err(e)) => return Received::Failed(e.kind()),
            }
        }
    }

    /// Application data until `pattern` has arrived; returns it all. Panics on anything else.
    pub async fn expect_text(&mut self, pattern: &str) -> String {
        let mut text = String::new();
        while !text.contains(pattern) {
            match self.next_record().await {
                Received::Record(CONTENT_APPLICATION_DATA, data) => {
                    text.push_str(&String::from_utf8_lossy(&data))
                }
                other => panic!("expected `{pattern}`, got {other:?} after {text:?}"),
            }
        }
        text
    }

    /// Read until the broker ends the connection; returns the alerts it sent on the way
    /// (level, description). Panics on application data: a connection ended by a TLS error
    /// carries no more XMPP (today's layer, reading an alert as a clean close, answers
    /// `</stream:stream>`; a run of empty records followed by a ping gets its pong).
    pub async fn alerts_until_close(&mut self) -> Vec<(u8, u8)> {
        let mut alerts = Vec::new();
        loop {
            match self.next_record().await {
                Received::Record(CONTENT_ALERT, alert) => {
                    assert_eq!(alert.len(), 2, "alert record {alert:?}");
                    alerts.push((alert[0], alert[1]));
                }
                Received::Record(CONTENT_APPLICATION_DATA, data) => panic!(
                    "the connection should end on a TLS error, the broker sent application data {:?} (alerts before: {alerts:?})",
                    String::from_utf8_lossy(&data)
                ),
                Received::Record(other, data) => {
                    panic!("unexpected record, content type {other}: {data:?}")
                }
                // A reset is an end too: the broker may close with bytes of ours unread.
                Received::Eof | Received::Failed(_) => return alerts,
            }
        }
    }

    /// Expect exactly one fatal alert and then the end of the connection; returns its
    /// description.
    pub async fn expect_fatal_alert_and_close(&mut self) -> u8 {
        let alerts = self.alerts_until_close().await;
        match alerts[..] {
            [(ALERT_FATAL, description)] => description,
            _ => panic!(
                "expected one fatal alert (content type 21) before the close, got {alerts:?}"
            ),
        }
    }
}

/// An ordinary rustls client config trusting the test CA (TLS 1.3 against this broker).
pub fn rustls_config() -> Arc<rustls::ClientConfig> {
    rustls_config_with(test_roots())
}

/// An ordinary rustls client config with `roots` as its trust anchors.
pub fn rustls_config_with(roots: rustls::RootCertStore) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}
