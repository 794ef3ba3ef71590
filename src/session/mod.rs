//! Per-connection I/O drivers: one task per connection owns its socket.
//!
//! [`Conn`] is the thin framed-stream shell (bytes to [`Frame`]s, elements to bytes, one write per
//! stanza). `c2s` and `component` drive negotiation and then the ready loop, which selects over the
//! socket, the connection's [`Outbox`] and the shutdown signal. Everything else reaches a connection
//! only through its [`SessionHandle`] (held in the router).

pub mod c2s;
pub mod component;
mod external;
mod login;
mod ready;

use crate::outbox::Outbox;
use crate::xml::{writer, Element, Frame, FrameError, Framer, FramerLimits};
use std::task::Poll;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

/// A byte stream a session runs on (plain TCP before STARTTLS and for components, the broker's
/// TLS session after the handshake).
pub trait Transport: AsyncRead + AsyncWrite + Unpin {}

impl<T: AsyncRead + AsyncWrite + Unpin> Transport for T {}

/// What a connection is, for the routing policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Cpe,
    AcsAccount,
    Component,
    /// Another broker node of the cluster, sending connection requests on behalf of its ACS
    /// entities (src/cluster/): routed like an ACS entity, never forwarded to the cluster again.
    Node,
}

/// The router's reference to a live connection.
pub struct SessionHandle {
    pub conn_id: u64,
    /// Full JID of a client session; the domain of a component connection.
    pub jid: String,
    pub role: Role,
    pub outbox: Outbox,
    /// What the operator's view shows about the connection (`GET /v1/sessions`).
    pub info: SessionInfo,
}

/// Facts about a connection for the operator, fixed when the session is bound. Kept small: one
/// per session, for days (codes, not strings).
#[derive(Debug, Clone, Copy)]
pub struct SessionInfo {
    /// Seconds since the Unix epoch when the session was bound.
    pub since_unix: u64,
    /// None for in-process entities (the HTTP API).
    pub peer: Option<std::net::SocketAddr>,
    /// TLS protocol version and cipher suite, as their IANA code points (0 = no TLS).
    pub tls_version: u16,
    pub cipher_suite: u16,
    pub mechanism: Option<crate::proto::sasl::Mechanism>,
}

impl SessionInfo {
    pub fn new(peer: Option<std::net::SocketAddr>) -> SessionInfo {
        SessionInfo {
            since_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            peer,
            tls_version: 0,
            cipher_suite: 0,
            mechanism: None,
        }
    }

    /// The negotiated TLS parameters of `stream`.
    pub fn with_tls<S>(mut self, stream: &crate::tls::TlsStream<S>) -> SessionInfo
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        self.tls_version = stream.protocol_version().map_or(0, u16::from);
        self.cipher_suite = stream.cipher_suite().map_or(0, |s| u16::from(s.suite()));
        self
    }

    pub fn tls_version_name(&self) -> Option<String> {
        (self.tls_version != 0)
            .then(|| format!("{:?}", rustls::ProtocolVersion::from(self.tls_version)))
    }

    pub fn cipher_suite_name(&self) -> Option<String> {
        (self.cipher_suite != 0)
            .then(|| format!("{:?}", rustls::CipherSuite::from(self.cipher_suite)))
    }
}

impl SessionHandle {
    /// The connection's task is ending: refuse further pushes and free the outbox. Answers still
    /// queued will never be delivered: count them as answers for a gone ACS connection.
    pub fn seal(&self, stats: &crate::ops::metrics::Stats) {
        let lost = self.outbox.seal();
        if lost > 0 {
            stats
                .answers_acs_gone
                .fetch_add(lost as u64, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

impl std::fmt::Debug for SessionHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}#{}", self.jid, self.conn_id)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("peer closed the connection")]
    Eof,
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("write did not complete within the stuck-session grace")]
    WriteStuck,
}

const READ_CHUNK: usize = 4096;

/// A framed XML stream over any byte stream (plain TCP before STARTTLS, TLS after).
pub struct Conn<S> {
    pub stream: S,
    pub framer: Framer,
    /// Bytes read but not yet framed (`read_buf[read_pos..]`).
    read_buf: Vec<u8>,
    read_pos: usize,
    write_buf: Vec<u8>,
    write_timeout: Duration,
    limits: FramerLimits,
    content_ns: &'static str,
    /// Whether our stream header has been sent (a stream error needs one first).
    pub header_sent: bool,
    /// Set by a stream restart: whitespace before the new stream's first other byte is dropped.
    skip_leading_whitespace: bool,
}

impl<S: Transport> Conn<S> {
    pub fn new(
        stream: S,
        limits: FramerLimits,
        content_ns: &'static str,
        write_timeout: Duration,
    ) -> Self {
        Conn {
            stream,
            framer: Framer::new(limits, content_ns),
            read_buf: Vec::new(),
            read_pos: 0,
            write_buf: Vec::new(),
            write_timeout,
            limits,
            content_ns,
            header_sent: false,
            skip_leading_whitespace: false,
        }
    }

    /// Start a new XML stream on the same bytes (after SASL success).
    ///
    /// Whitespace the client sent after its last stanza (many end every write with a newline)
    /// belongs to the old stream; fed to the new framer it would come before the new header's
    /// `<?xml ...?>`, which must be the very first thing of a document (`not-well-formed`). So
    /// whitespace is dropped up to the new stream's first other byte, both what is buffered now
    /// and what the same client write delivers in a later read (TCP and TLS may split a write).
    /// Anything else stays for the new stream.
    pub fn restart_stream(&mut self) {
        self.framer = Framer::new(self.limits, self.content_ns);
        self.header_sent = false;
        self.skip_leading_whitespace = true;
    }

    pub fn content_ns(&self) -> &'static str {
        self.content_ns
    }

    /// Next frame from buffered bytes only (no I/O).
    pub fn buffered_frame(&mut self) -> Result<Option<Frame>, ConnError> {
        if self.skip_leading_whitespace {
            let rest = &self.read_buf[self.read_pos..];
            let blank = leading_whitespace(rest);
            self.skip_leading_whitespace = blank == rest.len();
            self.read_pos += blank;
        }
        if self.read_pos >= self.read_buf.len() {
            self.read_pos = 0;
            self.read_buf.clear();
            return Ok(None);
        }
        let mut input = &self.read_buf[self.read_pos..];
        let before = input.len();
        let frame = self.framer.next_frame(&mut input)?;
        self.read_pos += before - input.len();
        if self.read_pos >= self.read_buf.len() {
            self.read_pos = 0;
            self.read_buf.clear();
        }
        Ok(frame)
    }

    /// Read once from the socket into the buffer. The read goes through a stack buffer that
    /// lives only during one poll, so a session waiting for data holds no read buffer at all
    /// (most sessions spend their life here). Cancel-safe: nothing is lost if dropped.
    pub async fn fill(&mut self) -> Result<(), ConnError> {
        let n = std::future::poll_fn(|cx| {
            let mut chunk = [0u8; READ_CHUNK];
            let mut read_buf = tokio::io::ReadBuf::new(&mut chunk);
            match std::pin::Pin::new(&mut self.stream).poll_read(cx, &mut read_buf) {
                Poll::Ready(Ok(())) => {
                    let filled = read_buf.filled();
                    self.read_buf.extend_from_slice(filled);
                    Poll::Ready(Ok(filled.len()))
                }
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            }
        })
        .await?;
        if n == 0 {
            return Err(ConnError::Eof);
        }
        Ok(())
    }

    /// Wait for the next complete frame.
    pub async fn next_frame(&mut self) -> Result<Frame, ConnError> {
        loop {
            if let Some(frame) = self.buffered_frame()? {
                return Ok(frame);
            }
            self.fill().await?;
        }
    }

    /// Release read buffers while the connection idles.
    pub fn release_idle_memory(&mut self) {
        if self.read_pos >= self.read_buf.len() {
            self.read_buf = Vec::new();
            self.read_pos = 0;
        }
        self.write_buf = Vec::new();
        self.framer.release_temporaries();
    }

    /// Send raw bytes in one write and flush.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ConnError> {
        let write = async {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        };
        match tokio::time::timeout(self.write_timeout, write).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(ConnError::WriteStuck),
        }
    }

    /// Serialise and send one element in one write.
    pub async fn send_element(&mut self, element: &Element) -> Result<(), ConnError> {
        let mut buf = std::mem::take(&mut self.write_buf);
        buf.clear();
        writer::write_element(&mut buf, element, self.content_ns);
        let result = self.send_raw(&buf).await;
        self.write_buf = buf;
        result
    }

    /// Send our stream header (response to the peer's).
    pub async fn send_header(
        &mut self,
        from: &str,
        to: Option<&str>,
        id: &str,
    ) -> Result<(), ConnError> {
        let mut buf = Vec::with_capacity(256);
        writer::stream_header(&mut buf, self.content_ns, from, to, id);
        self.header_sent = true;
        self.send_raw(&buf).await
    }

    /// Send a stream error (with a header first if none was sent) and close our side.
    pub async fn send_stream_error(&mut self, from: &str, condition: &str, text: Option<&str>) {
        let mut buf = Vec::with_capacity(256);
        if !self.header_sent {
            writer::stream_header(&mut buf, self.content_ns, from, None, &new_stream_id());
            self.header_sent = true;
        }
        writer::stream_error(&mut buf, condition, text);
        // Best effort: the peer may already be gone.
        let _ = self.send_raw(&buf).await;
        let _ = tokio::time::timeout(Duration::from_secs(1), self.stream.shutdown()).await;
    }

    /// Close our side of the stream politely.
    pub async fn close(&mut self) {
        let _ = self.send_raw(writer::STREAM_FOOTER).await;
        self.shutdown_transport().await;
    }

    /// Close the transport: TLS close_notify (rustls), then TCP FIN. Best effort, bounded.
    pub async fn shutdown_transport(&mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.stream.shutdown()).await;
    }
}

/// How many bytes at the start of `bytes` are XML whitespace (S in XML 1.0: space, tab, CR, LF).
fn leading_whitespace(bytes: &[u8]) -> usize {
    bytes
        .iter()
        .take_while(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
        .count()
}

/// A fresh unpredictable stream id (also the XEP-0114 handshake salt).
pub fn new_stream_id() -> String {
    let mut bytes = [0u8; 12];
    if getrandom::getrandom(&mut bytes).is_err() {
        // getrandom failing means the OS has no entropy source: a counter keeps ids unique.
        static FALLBACK: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let n = FALLBACK.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        bytes[..8].copy_from_slice(&n.to_le_bytes());
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &[u8] = b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
        xmlns:stream='http://etherx.jabber.org/streams' to='example.net' version='1.0'>";

    fn conn_with(bytes: &[u8]) -> Conn<tokio::io::DuplexStream> {
        let (stream, _peer) = tokio::io::duplex(64);
        let mut conn = Conn::new(
            stream,
            FramerLimits::default(),
            crate::xml::ns::CLIENT,
            Duration::from_secs(1),
        );
        conn.read_buf.extend_from_slice(bytes);
        conn
    }

    #[test]
    fn whitespace_count_stops_at_the_first_other_byte() {
        assert_eq!(leading_whitespace(b""), 0);
        assert_eq!(leading_whitespace(b"\r\n\t <x"), 4);
        assert_eq!(leading_whitespace(b"x \n"), 0);
        // Not XML whitespace: form feed, vertical tab, non-breaking space.
        assert_eq!(leading_whitespace(b"\x0c<"), 0);
        assert_eq!(leading_whitespace(b"\x0b<"), 0);
        assert_eq!(leading_whitespace("\u{a0}<".as_bytes()), 0);
    }

    #[test]
    fn a_fresh_stream_keeps_its_leading_whitespace() {
        // Only a restart drops whitespace: the first stream of a connection is parsed as sent.
        let mut conn = conn_with(b"\n");
        conn.read_buf.extend_from_slice(HEADER);
        assert!(conn.buffered_frame().is_err());
    }

    #[test]
    fn restart_drops_whitespace_buffered_and_arriving_later() {
        let mut conn = conn_with(b"\r\n\t ");
        conn.restart_stream();
        assert!(conn.buffered_frame().unwrap().is_none());
        // More whitespace in a later read, then the new header with an XML declaration.
        conn.read_buf.extend_from_slice(b" \n");
        assert!(conn.buffered_frame().unwrap().is_none());
        conn.read_buf.extend_from_slice(HEADER);
        assert!(matches!(
            conn.buffered_frame().unwrap(),
            Some(Frame::StreamOpen(_))
        ));
        // Once the new stream has begun, whitespace is ordinary stream content again.
        assert!(!conn.skip_leading_whitespace);
    }

    #[test]
    fn restart_keeps_everything_after_the_whitespace() {
        let mut conn = conn_with(b"\n");
        conn.read_buf.extend_from_slice(HEADER);
        conn.restart_stream();
        assert!(matches!(
            conn.buffered_frame().unwrap(),
            Some(Frame::StreamOpen(_))
        ));
        // Something other than whitespace first is not dropped: the new stream sees it (and
        // here rejects it, since a document may not start with text).
        let mut conn = conn_with(b" x");
        conn.read_buf.extend_from_slice(HEADER);
        conn.restart_stream();
        assert!(conn.buffered_frame().is_err());
        assert_eq!(conn.read_buf[conn.read_pos], b'x');
    }
}
