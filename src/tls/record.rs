//! The TLS record layer after the handshake, run by the broker itself with the traffic keys
//! taken out of rustls (`dangerous_extract_secrets`, the interface rustls offers for kTLS).
//!
//! Why: a rustls connection keeps about 7 KiB per session for good (its state, a 4 KiB receive
//! buffer, its record-layer objects). A CPE session idles for days; here an idle session holds
//! only its two AEAD keys, IVs and sequence numbers, and allocates a buffer only while a record
//! is in flight. Supported: TLS 1.3 and TLS 1.2 with AES-GCM and ChaCha20-Poly1305 (every suite
//! rustls offers). A TLS 1.3 KeyUpdate from the peer ends the connection (the extracted keys
//! cannot be ratcheted without rustls's key schedule); clients do not send one unprompted in
//! the amounts of traffic a CPE sees, and a CPE simply reconnects.

use super::cork::MAX_RECORD_BODY;
use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use rustls::{ConnectionTrafficSecrets, ProtocolVersion};
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

const HEADER_LEN: usize = 5;
const TAG_LEN: usize = 16;
const MAX_PLAINTEXT: usize = 16384;
const CONTENT_ALERT: u8 = 21;
const CONTENT_HANDSHAKE: u8 = 22;
const CONTENT_APPLICATION_DATA: u8 = 23;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    Tls12,
    Tls13,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cipher {
    Gcm,
    ChaCha,
}

/// One direction's keys.
struct Keys {
    key: LessSafeKey,
    iv: [u8; 12],
    seq: u64,
}

impl Keys {
    fn new(secrets: ConnectionTrafficSecrets, seq: u64) -> io::Result<(Keys, Cipher)> {
        let (algorithm, cipher, key, iv) = match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => {
                (&aead::AES_128_GCM, Cipher::Gcm, key, iv)
            }
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => {
                (&aead::AES_256_GCM, Cipher::Gcm, key, iv)
            }
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (&aead::CHACHA20_POLY1305, Cipher::ChaCha, key, iv)
            }
            _ => return Err(io::Error::other("unsupported TLS cipher")),
        };
        let unbound = UnboundKey::new(algorithm, key.as_ref())
            .map_err(|_| io::Error::other("bad TLS key"))?;
        let iv: [u8; 12] = iv
            .as_ref()
            .try_into()
            .map_err(|_| io::Error::other("bad TLS iv"))?;
        Ok((
            Keys {
                key: LessSafeKey::new(unbound),
                iv,
                seq,
            },
            cipher,
        ))
    }

    /// iv XOR big-endian sequence number (TLS 1.3 and TLS 1.2 ChaCha20; TLS 1.2 GCM's send side).
    fn xor_nonce(&self) -> [u8; 12] {
        let mut nonce = self.iv;
        for (n, s) in nonce[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *n ^= s;
        }
        nonce
    }

    fn next_seq(&mut self) -> io::Result<()> {
        self.seq = self
            .seq
            .checked_add(1)
            .ok_or_else(|| io::Error::other("TLS sequence number exhausted"))?;
        Ok(())
    }
}

fn tls12_aad(seq: u64, content_type: u8, plaintext_len: usize) -> [u8; 13] {
    let mut aad = [0u8; 13];
    aad[..8].copy_from_slice(&seq.to_be_bytes());
    aad[8] = content_type;
    aad[9] = 3;
    aad[10] = 3;
    aad[11..].copy_from_slice(&(plaintext_len as u16).to_be_bytes());
    aad
}

fn bad_record(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// A TLS connection after the handshake: TCP plus the broker's own record layer.
pub struct TlsSession {
    tcp: TcpStream,
    version: Version,
    cipher: Cipher,
    rx: Keys,
    tx: Keys,
    /// Header of the record being received.
    header: [u8; HEADER_LEN],
    header_len: usize,
    /// Body of the record being received (allocated only while one is in flight).
    body: Vec<u8>,
    /// Decrypted bytes not yet read, from `plain_pos`.
    plain: Vec<u8>,
    plain_pos: usize,
    /// Encrypted bytes not yet written, from `out_pos`.
    out: Vec<u8>,
    out_pos: usize,
    peer_closed: bool,
}

impl TlsSession {
    /// Take over from rustls. `pending_ciphertext` is what the handshake cork read past the last
    /// record rustls processed; `plaintext` is application data rustls had already decrypted.
    pub fn new(
        tcp: TcpStream,
        version: ProtocolVersion,
        secrets: rustls::ExtractedSecrets,
        pending_ciphertext: Vec<u8>,
        plaintext: Vec<u8>,
    ) -> io::Result<TlsSession> {
        let version = match version {
            ProtocolVersion::TLSv1_3 => Version::Tls13,
            ProtocolVersion::TLSv1_2 => Version::Tls12,
            _ => return Err(io::Error::other("unsupported TLS version")),
        };
        let (tx_seq, tx_secrets) = secrets.tx;
        let (rx_seq, rx_secrets) = secrets.rx;
        let (tx, cipher) = Keys::new(tx_secrets, tx_seq)?;
        let (rx, _) = Keys::new(rx_secrets, rx_seq)?;
        let mut session = TlsSession {
            tcp,
            version,
            cipher,
            rx,
            tx,
            header: [0; HEADER_LEN],
            header_len: 0,
            body: Vec::new(),
            plain: plaintext,
            plain_pos: 0,
            out: Vec::new(),
            out_pos: 0,
            peer_closed: false,
        };
        // Bytes the cork held: a partial record. Split into header and body as if just read.
        let take = pending_ciphertext.len().min(HEADER_LEN);
        session.header[..take].copy_from_slice(&pending_ciphertext[..take]);
        session.header_len = take;
        if pending_ciphertext.len() > HEADER_LEN {
            session.body = pending_ciphertext[HEADER_LEN..].to_vec();
        }
        Ok(session)
    }

    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    fn body_len(&self) -> usize {
        u16::from_be_bytes([self.header[3], self.header[4]]) as usize
    }

    /// Decrypt the complete record in `header` + `body`; returns its content type, with the
    /// plaintext left in `body`.
    fn open_record(&mut self) -> io::Result<u8> {
        let outer_type = self.header[0];
        let body = &mut self.body;
        let content_type = match (self.version, self.cipher) {
            (Version::Tls13, _) => {
                if outer_type != CONTENT_APPLICATION_DATA {
                    return Err(bad_record("unexpected record type"));
                }
                let nonce = Nonce::assume_unique_for_key(self.rx.xor_nonce());
                let plain_len = self
                    .rx
                    .key
                    .open_in_place(nonce, Aad::from(self.header), body)
                    .map_err(|_| bad_record("TLS record failed to decrypt"))?
                    .len();
                body.truncate(plain_len);
                // Strip padding; the last non-zero byte is the real content type.
                let end = body
                    .iter()
                    .rposition(|&b| b != 0)
                    .ok_or_else(|| bad_record("record without content type"))?;
                let content_type = body[end];
                body.truncate(end);
                content_type
            }
            (Version::Tls12, Cipher::Gcm) => {
                if body.len() < 8 + TAG_LEN {
                    return Err(bad_record("short TLS record"));
                }
                let mut nonce = [0u8; 12];
                nonce[..4].copy_from_slice(&self.rx.iv[..4]);
                nonce[4..].copy_from_slice(&body[..8]);
                let aad = tls12_aad(self.rx.seq, outer_type, body.len() - 8 - TAG_LEN);
                let plain_len = self
                    .rx
                    .key
                    .open_within(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::from(aad),
                        body,
                        8..,
                    )
                    .map_err(|_| bad_record("TLS record failed to decrypt"))?
                    .len();
                body.truncate(plain_len);
                outer_type
            }
            (Version::Tls12, Cipher::ChaCha) => {
                if body.len() < TAG_LEN {
                    return Err(bad_record("short TLS record"));
                }
                let aad = tls12_aad(self.rx.seq, outer_type, body.len() - TAG_LEN);
                let nonce = Nonce::assume_unique_for_key(self.rx.xor_nonce());
                let plain_len = self
                    .rx
                    .key
                    .open_in_place(nonce, Aad::from(aad), body)
                    .map_err(|_| bad_record("TLS record failed to decrypt"))?
                    .len();
                body.truncate(plain_len);
                outer_type
            }
        };
        self.rx.next_seq()?;
        if self.body.len() > MAX_PLAINTEXT {
            return Err(bad_record("oversized TLS record"));
        }
        Ok(content_type)
    }

    /// Encrypt `plaintext` (at most 2^14 bytes) as one record of `content_type` onto `out`.
    fn seal_record(&mut self, content_type: u8, plaintext: &[u8]) -> io::Result<()> {
        debug_assert!(plaintext.len() <= MAX_PLAINTEXT);
        let start = self.out.len();
        match self.version {
            Version::Tls13 => {
                let len = plaintext.len() + 1 + TAG_LEN;
                let header = [CONTENT_APPLICATION_DATA, 3, 3, (len >> 8) as u8, len as u8];
                self.out.extend_from_slice(&header);
                self.out.extend_from_slice(plaintext);
                self.out.push(content_type);
                let nonce = Nonce::assume_unique_for_key(self.tx.xor_nonce());
                let tag = self
                    .tx
                    .key
                    .seal_in_place_separate_tag(
                        nonce,
                        Aad::from(header),
                        &mut self.out[start + HEADER_LEN..],
                    )
                    .map_err(|_| io::Error::other("TLS encryption failed"))?;
                self.out.extend_from_slice(tag.as_ref());
            }
            Version::Tls12 => {
                let explicit = if self.cipher == Cipher::Gcm { 8 } else { 0 };
                let len = explicit + plaintext.len() + TAG_LEN;
                self.out
                    .extend_from_slice(&[content_type, 3, 3, (len >> 8) as u8, len as u8]);
                let nonce = self.tx.xor_nonce();
                if explicit > 0 {
                    self.out.extend_from_slice(&nonce[4..]);
                }
                self.out.extend_from_slice(plaintext);
                let aad = tls12_aad(self.tx.seq, content_type, plaintext.len());
                let tag = self
                    .tx
                    .key
                    .seal_in_place_separate_tag(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::from(aad),
                        &mut self.out[start + HEADER_LEN + explicit..],
                    )
                    .map_err(|_| io::Error::other("TLS encryption failed"))?;
                self.out.extend_from_slice(tag.as_ref());
            }
        }
        self.tx.next_seq()
    }

    /// Write out pending ciphertext; Ready(Ok) once all of it is written.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.out_pos < self.out.len() {
            let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, &self.out[self.out_pos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out_pos += n;
        }
        // Nothing held while idle.
        self.out = Vec::new();
        self.out_pos = 0;
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for TlsSession {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.plain_pos < this.plain.len() {
                if super::copy_out(&this.plain, &mut this.plain_pos, buf) {
                    this.plain = Vec::new();
                    this.plain_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.peer_closed {
                return Poll::Ready(Ok(()));
            }
            if this.header_len < HEADER_LEN {
                let mut header_buf = ReadBuf::new(&mut this.header[this.header_len..]);
                ready!(Pin::new(&mut this.tcp).poll_read(cx, &mut header_buf))?;
                let n = header_buf.filled().len();
                if n == 0 {
                    if this.header_len == 0 {
                        // TCP closed without close_notify: treat as end of stream.
                        this.peer_closed = true;
                        continue;
                    }
                    return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
                }
                this.header_len += n;
                continue;
            }
            let len = this.body_len();
            if len > MAX_RECORD_BODY || this.header[1] != 3 {
                return Poll::Ready(Err(bad_record("bad TLS record header")));
            }
            if this.body.len() < len {
                let want = len - this.body.len();
                if ready!(super::poll_append(&mut this.tcp, cx, &mut this.body, want))? == 0 {
                    return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
                }
                continue;
            }
            let content_type = this.open_record()?;
            let body = std::mem::take(&mut this.body);
            this.header_len = 0;
            match content_type {
                CONTENT_APPLICATION_DATA => {
                    if !body.is_empty() {
                        this.plain = body;
                        this.plain_pos = 0;
                    }
                }
                CONTENT_ALERT => {
                    // close_notify or a fatal alert: either way the peer is done sending.
                    this.peer_closed = true;
                }
                CONTENT_HANDSHAKE => {
                    return Poll::Ready(Err(io::Error::other(
                        "post-handshake TLS message (KeyUpdate/renegotiation) not supported",
                    )));
                }
                _ => return Poll::Ready(Err(bad_record("unexpected TLS content type"))),
            }
        }
    }
}

impl AsyncWrite for TlsSession {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_drain(cx))?;
        let n = buf.len().min(MAX_PLAINTEXT);
        this.seal_record(CONTENT_APPLICATION_DATA, &buf[..n])?;
        // Try to send now; what does not fit waits for the next write or flush.
        match this.poll_drain(cx) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            _ => Poll::Ready(Ok(n)),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_drain(cx))?;
        if this.tx.seq != u64::MAX {
            // close_notify, once: afterwards the sequence number marks it sent.
            this.seal_record(CONTENT_ALERT, &[1, 0])?;
            this.tx.seq = u64::MAX;
        }
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::crypto::ring::cipher_suite as suites;
    use rustls::SupportedCipherSuite;
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn server_acceptor() -> (tokio_rustls::TlsAcceptor, rustls::RootCertStore) {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let chain = vec![certified.cert.der().clone()];
        let key =
            rustls::pki_types::PrivateKeyDer::try_from(certified.key_pair.serialize_der()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain.clone(), key)
            .unwrap();
        config.enable_secret_extraction = true;
        config.ticketer = rustls::crypto::ring::Ticketer::new().unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(chain[0].clone()).unwrap();
        (tokio_rustls::TlsAcceptor::from(Arc::new(config)), roots)
    }

    fn client(
        roots: rustls::RootCertStore,
        suite: SupportedCipherSuite,
    ) -> tokio_rustls::TlsConnector {
        let mut provider = rustls::crypto::ring::default_provider();
        provider.cipher_suites = vec![suite];
        let version = match suite {
            SupportedCipherSuite::Tls13(_) => &rustls::version::TLS13,
            SupportedCipherSuite::Tls12(_) => &rustls::version::TLS12,
        };
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }

    /// A rustls client against the broker's record layer, for every suite: data both ways in
    /// several records, data sent right behind the handshake, and close_notify.
    #[tokio::test]
    async fn every_cipher_suite_round_trips_with_a_rustls_client() {
        let all = [
            suites::TLS13_AES_128_GCM_SHA256,
            suites::TLS13_AES_256_GCM_SHA384,
            suites::TLS13_CHACHA20_POLY1305_SHA256,
            suites::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            suites::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            suites::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        ];
        let (acceptor, roots) = server_acceptor();
        let upstream: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
        let downstream: Vec<u8> = (0..50_000u32).map(|i| (i % 241) as u8).collect();
        for suite in all {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let connector = client(roots.clone(), suite);
            let up = upstream.clone();
            let down = downstream.clone();
            let client_task = tokio::spawn(async move {
                let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
                let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
                let mut tls = connector.connect(name, tcp).await.unwrap();
                // Sent right behind the handshake, possibly in the same segment as Finished.
                tls.write_all(&up).await.unwrap();
                tls.flush().await.unwrap();
                let mut got = vec![0u8; down.len()];
                tls.read_exact(&mut got).await.unwrap();
                assert_eq!(got, down);
                tls.shutdown().await.unwrap();
            });
            let (tcp, _) = listener.accept().await.unwrap();
            let mut session = super::super::accept(&acceptor, tcp).await.unwrap();
            let mut got = vec![0u8; upstream.len()];
            session.read_exact(&mut got).await.unwrap();
            assert_eq!(got, upstream, "{suite:?}");
            session.write_all(&downstream).await.unwrap();
            session.flush().await.unwrap();
            let mut rest = Vec::new();
            session.read_to_end(&mut rest).await.unwrap();
            assert!(rest.is_empty(), "{suite:?}: close_notify ends the stream");
            client_task.await.unwrap();
            session.shutdown().await.unwrap();
        }
    }

    #[tokio::test]
    async fn tampered_record_is_refused() {
        let (acceptor, roots) = server_acceptor();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connector = client(roots, suites::TLS13_AES_128_GCM_SHA256);
        let client_task = tokio::spawn(async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let tls = connector.connect(name, tcp).await.unwrap();
            let (mut tcp, _) = tls.into_inner();
            // A well-framed record with garbage inside.
            tcp.write_all(&[23, 3, 3, 0, 20]).await.unwrap();
            tcp.write_all(&[0x55; 20]).await.unwrap();
            tcp
        });
        let (tcp, _) = listener.accept().await.unwrap();
        let mut session = super::super::accept(&acceptor, tcp).await.unwrap();
        let _tcp = client_task.await.unwrap();
        let mut buf = [0u8; 16];
        let err = session.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
