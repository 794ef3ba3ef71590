//! A read wrapper for the TLS handshake that hands rustls one whole TLS record at a time.
//!
//! After the handshake the broker takes the traffic keys out of rustls and runs the record layer
//! itself ([`super::record`]), so that an idle session holds no rustls buffers. For that hand-over
//! to be lossless, rustls must not have read past what it processed: this wrapper delivers only
//! complete records (at most one per read), so every byte rustls received was processed by it, and
//! a record that has arrived only in part stays here, to be handed to the record layer.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const HEADER_LEN: usize = 5;
/// Largest TLS record (ciphertext) a peer may send: 2^14 + 2048 (RFC 5246 section 6.2.3).
pub const MAX_RECORD_BODY: usize = 16384 + 2048;

pub struct RecordCork<S> {
    inner: S,
    /// The record being collected (header + body), then delivered from `delivered`.
    record: Vec<u8>,
    delivered: usize,
}

impl<S> RecordCork<S> {
    pub fn new(inner: S) -> Self {
        RecordCork {
            inner,
            record: Vec::new(),
            delivered: 0,
        }
    }

    /// The stream and any bytes read from it but not handed to rustls (a partial record).
    pub fn into_parts(self) -> (S, Vec<u8>) {
        let mut rest = self.record;
        rest.drain(..self.delivered);
        (self.inner, rest)
    }

    /// Bytes of the current record still missing, or None while the header is incomplete.
    fn missing(&self) -> Option<usize> {
        if self.record.len() < HEADER_LEN {
            return None;
        }
        let body = u16::from_be_bytes([self.record[3], self.record[4]]) as usize;
        Some(HEADER_LEN + body - self.record.len())
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for RecordCork<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            // Deliver a complete record first; an oversized one as soon as its header is in,
            // so rustls rejects it with the proper alert.
            let oversized = this.record.len() >= HEADER_LEN
                && u16::from_be_bytes([this.record[3], this.record[4]]) as usize > MAX_RECORD_BODY;
            if this.missing() == Some(0) || oversized {
                if super::copy_out(&this.record, &mut this.delivered, buf) && !oversized {
                    this.record.clear();
                    this.delivered = 0;
                }
                return Poll::Ready(Ok(()));
            }
            let want = match this.missing() {
                None => HEADER_LEN - this.record.len(),
                Some(missing) => missing,
            };
            if ready!(super::poll_append(
                &mut this.inner,
                cx,
                &mut this.record,
                want
            ))? == 0
            {
                // EOF: hand over whatever there is; rustls reports the truncation.
                super::copy_out(&this.record, &mut this.delivered, buf);
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for RecordCork<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn delivers_whole_records_one_at_a_time_and_keeps_a_partial_one() {
        let (mut client, server) = tokio::io::duplex(1024);
        // Two complete records and the first 3 bytes of a third.
        let wire = [22, 3, 3, 0, 2, 0xaa, 0xbb, 23, 3, 3, 0, 1, 0xcc, 23, 3, 3];
        tokio::io::AsyncWriteExt::write_all(&mut client, &wire)
            .await
            .unwrap();
        let mut cork = RecordCork::new(server);
        let mut buf = [0u8; 64];
        let n = cork.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], &[22, 3, 3, 0, 2, 0xaa, 0xbb]);
        let n = cork.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], &[23, 3, 3, 0, 1, 0xcc]);
        let third =
            tokio::time::timeout(std::time::Duration::from_millis(50), cork.read(&mut buf)).await;
        assert!(third.is_err(), "a partial record is not delivered");
        let (_, rest) = cork.into_parts();
        assert_eq!(rest, vec![23, 3, 3]);
    }
}
