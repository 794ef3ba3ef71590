//! A TLS server stream driven through rustls's unbuffered API
//! (`rustls::server::UnbufferedServerConnection`).
//!
//! rustls does all of TLS: the handshake, record protection, alerts (received and sent), KeyUpdate,
//! close_notify and every record limit. This file only moves bytes: it owns the three buffers
//! rustls's unbuffered API leaves to the caller and keeps them empty while a session idles, which
//! is why an idle CPE session stays a few KiB (a buffered rustls connection keeps about 7 KiB of
//! buffers for good):
//! - `incoming`: TLS bytes received and not yet consumed by rustls. It grows only by what the
//!   socket delivered (never by what a record header announces), so an unauthenticated peer pins
//!   at most the bytes it actually sent.
//! - `plain`: application data rustls decrypted and the session has not read yet.
//! - `out`: TLS bytes rustls produced (handshake, alerts, encrypted data) not yet written.
//!
//! Errors: a TLS error (a fatal alert received, a record rustls refuses) is counted in
//! `tls_errors`; the alert rustls queued in answer is sent before the error is returned. A clean
//! close_notify is counted in `tls_close_notify` and reads as end of stream. A TCP FIN without
//! close_notify reads as `UnexpectedEof`, never as a clean end.

use crate::ops::metrics::Stats;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, InsufficientSizeError, UnbufferedStatus,
};
use rustls::ServerConfig;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Bytes read from the socket per read call (on the stack: nothing is allocated before bytes
/// arrive). One full TLS record fits (16 KiB plaintext + 256 bytes of expansion + header).
const READ_CHUNK: usize = 16 * 1024 + 256 + 5;
/// Most application data encrypted per `poll_write` call (rustls splits it into records).
const MAX_WRITE: usize = 64 * 1024;

/// Where the stream stands, once it is no longer simply open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    Open,
    /// The peer sent close_notify: reads return end of stream.
    PeerClosed,
    /// A TLS error ended the connection (already counted); reads and writes fail.
    Failed,
}

/// A TLS stream over a byte stream (TCP for the broker; an in-memory pipe in the fuzz target),
/// for the session after (and during) the handshake.
pub struct TlsStream<S = TcpStream> {
    tcp: S,
    conn: UnbufferedServerConnection,
    incoming: Vec<u8>,
    plain: Vec<u8>,
    plain_pos: usize,
    out: Vec<u8>,
    out_pos: usize,
    ending: Ending,
    close_notify_queued: bool,
    stats: Arc<Stats>,
}

/// What rustls can do next, after it processed every complete record it had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// Still handshaking: rustls needs more bytes from the peer.
    Handshake,
    /// Application data may flow.
    Traffic,
    /// Both sides sent close_notify.
    Closed,
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream<S> {
    /// Run the TLS handshake on `tcp` to completion (the client's Finished verified).
    pub async fn accept(
        config: Arc<ServerConfig>,
        tcp: S,
        stats: Arc<Stats>,
    ) -> io::Result<TlsStream<S>> {
        let conn = UnbufferedServerConnection::new(config).map_err(io::Error::other)?;
        let mut stream = TlsStream {
            tcp,
            conn,
            incoming: Vec::new(),
            plain: Vec::new(),
            plain_pos: 0,
            out: Vec::new(),
            out_pos: 0,
            ending: Ending::Open,
            close_notify_queued: false,
            stats,
        };
        std::future::poll_fn(|cx| stream.poll_handshake(cx)).await?;
        Ok(stream)
    }

    /// The negotiated protocol version and cipher suite, for logs and the operator's view.
    pub fn protocol_version(&self) -> Option<rustls::ProtocolVersion> {
        self.conn.protocol_version()
    }

    pub fn cipher_suite(&self) -> Option<rustls::SupportedCipherSuite> {
        self.conn.negotiated_cipher_suite()
    }

    /// The client's certificate chain, end-entity first, when the listener asked for one and
    /// rustls verified it (rustls keeps it; read it during negotiation, keep only what is needed).
    pub fn peer_certificates(&self) -> Option<&[rustls::pki_types::CertificateDer<'static>]> {
        self.conn.peer_certificates()
    }

    /// The underlying byte stream.
    pub fn get_ref(&self) -> &S {
        &self.tcp
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let next = match self.process(None, false) {
                Ok(next) => next,
                Err(error) => {
                    // The alert rustls queued goes out first, best effort.
                    let _ = self.poll_write_out(cx);
                    return Poll::Ready(Err(error));
                }
            };
            ready!(self.poll_write_out(cx))?;
            if next == Next::Traffic && !self.conn.is_handshaking() {
                return Poll::Ready(Ok(()));
            }
            if next == Next::Closed || self.ending != Ending::Open {
                return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
            }
            ready!(self.poll_receive(cx))?;
        }
    }

    /// Let rustls process every complete record in `incoming`: decrypted data goes to `plain`,
    /// whatever rustls wants sent goes to `out`. `app_data` is encrypted into `out` once rustls
    /// allows application data; with `close`, a close_notify alert follows it.
    fn process(&mut self, mut app_data: Option<&[u8]>, close: bool) -> io::Result<Next> {
        loop {
            let UnbufferedStatus { discard, state } =
                self.conn.process_tls_records(&mut self.incoming[..]);
            let next = match state {
                Ok(ConnectionState::ReadTraffic(mut traffic)) => {
                    while let Some(record) = traffic.next_record() {
                        let record = record.map_err(io::Error::other)?;
                        self.plain.extend_from_slice(record.payload);
                    }
                    None
                }
                Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                    append_with(&mut self.out, |buf| {
                        encode.encode(buf).map_err(|e| match e {
                            EncodeError::InsufficientSize(InsufficientSizeError {
                                required_size,
                            }) => Some(required_size),
                            EncodeError::AlreadyEncoded => None,
                        })
                    })?;
                    None
                }
                Ok(ConnectionState::TransmitTlsData(mut transmit)) => {
                    // The bytes are in `out`, ahead of anything queued later: sent in order.
                    if let (Some(data), Some(mut traffic)) =
                        (app_data, transmit.may_encrypt_app_data())
                    {
                        append_with(&mut self.out, |buf| {
                            traffic.encrypt(data, buf).map_err(encrypt_required)
                        })?;
                        app_data = None;
                    }
                    transmit.done();
                    None
                }
                Ok(ConnectionState::WriteTraffic(mut traffic)) => {
                    if let Some(data) = app_data.take() {
                        append_with(&mut self.out, |buf| {
                            traffic.encrypt(data, buf).map_err(encrypt_required)
                        })?;
                    }
                    if close {
                        // rustls encrypts the alert; after it rustls sends nothing more.
                        append_with(&mut self.out, |buf| {
                            traffic.queue_close_notify(buf).map_err(encrypt_required)
                        })?;
                    }
                    Some(Next::Traffic)
                }
                Ok(ConnectionState::BlockedHandshake) => Some(Next::Handshake),
                Ok(ConnectionState::PeerClosed) => {
                    self.ending = Ending::PeerClosed;
                    Stats::bump(&self.stats.tls_close_notify);
                    None
                }
                Ok(ConnectionState::Closed) => Some(Next::Closed),
                Ok(_) => {
                    // Early data (0-RTT) is never enabled; anything else new is unexpected.
                    Some(Next::Closed)
                }
                Err(error) => {
                    self.incoming.drain(..discard.min(self.incoming.len()));
                    return Err(self.fail(error));
                }
            };
            self.incoming.drain(..discard);
            if let Some(next) = next {
                if app_data.is_some() && next == Next::Traffic {
                    continue;
                }
                return Ok(next);
            }
        }
    }

    /// A TLS error: count it, queue the alert rustls prepared (sent best effort by the caller's
    /// next flush), and make every later call fail.
    fn fail(&mut self, error: rustls::Error) -> io::Error {
        if self.ending != Ending::Failed {
            self.ending = Ending::Failed;
            Stats::bump(&self.stats.tls_errors);
            tracing::debug!("TLS error: {error}");
            // rustls queues its alert before reporting the error, as the last chunk of its
            // output; the next call hands out a queued chunk before it looks at any input.
            // Exactly one call, with the real remaining bytes (fuzz/regressions/unauth-tls-*):
            // - with an empty slice, rustls's handshake deframer, which keeps offsets into the
            //   bytes it was given, indexed out of bounds when no alert was queued (an oversized
            //   handshake message gets none);
            // - a second call would parse the failing record again and queue a second fatal
            //   alert (a debug assertion in rustls).
            let UnbufferedStatus { state, .. } =
                self.conn.process_tls_records(&mut self.incoming[..]);
            if let Ok(ConnectionState::EncodeTlsData(mut encode)) = state {
                let _ = append_with(&mut self.out, |buf| {
                    encode.encode(buf).map_err(|e| match e {
                        EncodeError::InsufficientSize(s) => Some(s.required_size),
                        EncodeError::AlreadyEncoded => None,
                    })
                });
            }
        }
        io::Error::new(io::ErrorKind::InvalidData, error)
    }

    /// Read once from the socket onto the end of `incoming`. Ready(Ok) after some bytes;
    /// a FIN is `UnexpectedEof` (a clean close is close_notify, which rustls reports).
    fn poll_receive(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Uninitialised: no 16 KiB memset per read.
        let mut chunk = [std::mem::MaybeUninit::<u8>::uninit(); READ_CHUNK];
        let mut read_buf = ReadBuf::uninit(&mut chunk);
        ready!(Pin::new(&mut self.tcp).poll_read(cx, &mut read_buf))?;
        let filled = read_buf.filled();
        if filled.is_empty() {
            return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
        }
        // Exactly what arrived: an unauthenticated peer pins only the bytes it sent.
        self.incoming.reserve_exact(filled.len());
        self.incoming.extend_from_slice(filled);
        Poll::Ready(Ok(()))
    }

    /// Write `out` to the socket until it is empty (then release it).
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.out_pos < self.out.len() {
            let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, &self.out[self.out_pos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out_pos += n;
        }
        self.out = Vec::new();
        self.out_pos = 0;
        Poll::Ready(Ok(()))
    }

    /// Give back buffers that hold nothing (the session is about to wait).
    fn release_idle(&mut self) {
        if self.incoming.is_empty() && self.incoming.capacity() > 0 {
            self.incoming = Vec::new();
        }
        if self.plain_pos >= self.plain.len() && self.plain.capacity() > 0 {
            self.plain = Vec::new();
            self.plain_pos = 0;
        }
    }
}

fn failed() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "TLS connection failed")
}

/// Run `write` on the spare end of `buf`, growing it to the size rustls asks for.
/// `write` returns Err(Some(required)) when the room was too small, Err(None) on a hard error.
fn append_with(
    buf: &mut Vec<u8>,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, Option<usize>>,
) -> io::Result<()> {
    let start = buf.len();
    let mut room = 0;
    loop {
        buf.resize(start + room, 0);
        match write(&mut buf[start..]) {
            Ok(n) => {
                buf.truncate(start + n);
                return Ok(());
            }
            Err(Some(required)) if required > room => room = required,
            Err(_) => {
                buf.truncate(start);
                return Err(io::Error::other("TLS: could not encode a record"));
            }
        }
    }
}

fn encrypt_required(error: EncryptError) -> Option<usize> {
    match error {
        EncryptError::InsufficientSize(InsufficientSizeError { required_size }) => {
            Some(required_size)
        }
        // Sequence numbers exhausted: rustls refuses to encrypt rather than reuse a nonce.
        EncryptError::EncryptExhausted => None,
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.plain_pos < this.plain.len() {
                let n = (this.plain.len() - this.plain_pos).min(buf.remaining());
                buf.put_slice(&this.plain[this.plain_pos..this.plain_pos + n]);
                this.plain_pos += n;
                if this.plain_pos == this.plain.len() {
                    this.plain.clear();
                    this.plain_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            match this.ending {
                Ending::PeerClosed => return Poll::Ready(Ok(())),
                Ending::Failed => {
                    // Best effort: the alert rustls queued goes out before the error.
                    let _ = this.poll_write_out(cx);
                    return Poll::Ready(Err(failed()));
                }
                Ending::Open => {}
            }
            let processed = this.process(None, false);
            // Whatever rustls wants sent (a KeyUpdate answer, an alert) goes out first.
            if this.poll_write_out(cx)?.is_pending() && this.plain.is_empty() {
                return Poll::Pending;
            }
            match processed {
                Err(error) => return Poll::Ready(Err(error)),
                Ok(Next::Closed) => return Poll::Ready(Ok(())),
                Ok(_) => {}
            }
            if !this.plain.is_empty() || this.ending != Ending::Open {
                continue;
            }
            match this.poll_receive(cx) {
                Poll::Ready(Ok(())) => continue,
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Pending => {
                    this.release_idle();
                    return Poll::Pending;
                }
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.ending == Ending::Failed || this.close_notify_queued {
            return Poll::Ready(Err(failed()));
        }
        // Earlier bytes first: keeps `out` bounded by one call's worth.
        ready!(this.poll_write_out(cx))?;
        let n = data.len().min(MAX_WRITE);
        if this.process(Some(&data[..n]), false)? != Next::Traffic {
            return Poll::Ready(Err(io::Error::other("TLS: not ready for application data")));
        }
        // Accepted: the records are in `out`; push them now, finish in poll_flush if needed.
        let _ = this.poll_write_out(cx)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_write_out(cx))?;
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.close_notify_queued && this.ending != Ending::Failed {
            this.close_notify_queued = true;
            // Best effort: a connection that cannot send it is closed without it.
            let _ = this.process(None, true);
        }
        ready!(this.poll_write_out(cx))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TlsVersion;
    use crate::tls::{create_dev_certificate, Identity};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// One configuration per test process (the tests run in parallel and share the temp dir).
    fn server_config() -> Arc<ServerConfig> {
        static CONFIG: std::sync::OnceLock<Arc<ServerConfig>> = std::sync::OnceLock::new();
        CONFIG
            .get_or_init(|| {
                let dir = std::env::temp_dir()
                    .join(format!("crbroker-stream-test-{}", std::process::id()));
                let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
                create_dev_certificate("example.net", &cert, &key).unwrap();
                let identity = Identity::load(&cert, &key).unwrap();
                let _ = std::fs::remove_dir_all(&dir);
                identity
                    .server_config(&[TlsVersion::Tls12, TlsVersion::Tls13], 0, None)
                    .unwrap()
            })
            .clone()
    }

    /// A ClientHello that does not decode gets rustls's fatal alert (collected by `fail`).
    #[tokio::test]
    async fn undecodable_client_hello_gets_an_alert() {
        let (mut client, server) = tokio::io::duplex(4096);
        client
            .write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 0x01, 0x00, 0x00, 0x01, 0x00])
            .await
            .unwrap();
        let stats = Arc::new(Stats::default());
        let accepted = TlsStream::accept(server_config(), server, stats.clone()).await;
        assert!(accepted.is_err());
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest.first(), Some(&0x15), "an alert record: {rest:02x?}");
        assert_eq!(rest.len(), 7, "exactly one plaintext alert: {rest:02x?}");
    }

    /// Found by the unauth fuzz target (fuzz/regressions/unauth-tls-oversized-handshake): a
    /// ClientHello declaring more than rustls accepts (no alert for that in rustls) made `fail`
    /// call rustls with an empty buffer while its handshake deframer held offsets into the real
    /// one: an index panic in the connection task.
    #[tokio::test]
    async fn oversized_handshake_message_fails_without_panicking() {
        let (mut client, server) = tokio::io::duplex(4096);
        client
            .write_all(&[0x16, 0x03, 0x01, 0x00, 0x04, 0x01, 0x01, 0x00, 0x00])
            .await
            .unwrap();
        let stats = Arc::new(Stats::default());
        let accepted = TlsStream::accept(server_config(), server, stats.clone()).await;
        let error = accepted.err().expect("the handshake fails");
        assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{error}");
        assert_eq!(Stats::get(&stats.tls_errors), 1);
        // Nothing but the end of the stream comes back (rustls sends no alert for this error).
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty() || rest[0] == 0x15, "{rest:02x?}");
    }
}
