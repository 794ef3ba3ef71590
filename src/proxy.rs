//! PROXY protocol (v1 text, v2 binary) on c2s listeners behind a load balancer: which peers may
//! send a header, and reading exactly one header off a fresh connection before TLS or XMPP.
//!
//! The header is parsed by the `proxy-header` crate. The socket is peeked, never over-read: only
//! the header's own bytes are consumed, so whatever the client sent behind it (a stream header, a
//! TLS ClientHello) stays in the kernel for the session to read. At most [`MAX_HEADER_BYTES`] are
//! looked at: v1 is at most 107 bytes, a v2 header with addresses 16 + 216, and what is left is
//! room for the TLVs a load balancer may add.

use ipnet::IpNet;
use proxy_header::{ParseConfig, ProxyHeader};
use std::net::{IpAddr, SocketAddr};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Most bytes a PROXY header may take (v2's 16-byte preamble plus 520 of addresses and TLVs).
pub const MAX_HEADER_BYTES: usize = 536;

/// The networks allowed to send PROXY headers to one listener (its `proxy_from`).
#[derive(Debug, Clone)]
pub struct ProxySources(Vec<IpNet>);

impl ProxySources {
    pub fn new(networks: Vec<IpNet>) -> ProxySources {
        ProxySources(networks)
    }

    /// Whether `peer` (a load balancer) may send a header. An IPv4 peer on a dual-stack socket
    /// (`::ffff:a.b.c.d`) is checked as IPv4.
    pub fn allows(&self, peer: IpAddr) -> bool {
        let peer = peer.to_canonical();
        self.0.iter().any(|network| network.contains(&peer))
    }
}

/// Why a connection's PROXY header was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    /// The peer closed before sending a byte (a load balancer's TCP health check).
    #[error("closed before a PROXY header")]
    ClosedBeforeHeader,
    #[error("closed in the middle of the PROXY header")]
    ClosedInHeader,
    #[error("malformed PROXY header: {0}")]
    Malformed(proxy_header::Error),
    #[error("PROXY header longer than {MAX_HEADER_BYTES} bytes")]
    TooLong,
    #[error("reading the PROXY header: {0}")]
    Io(#[from] std::io::Error),
}

/// Read one PROXY header off `tcp` and consume exactly its bytes. Returns the client's address
/// it names, or None for a header that names none (v2 LOCAL, a load balancer's own health
/// check; v1 UNKNOWN; a v2 UNIX address): the connection then stands for itself.
pub async fn read_header(tcp: &mut TcpStream) -> Result<Option<SocketAddr>, HeaderError> {
    let config = ParseConfig {
        include_tlvs: false,
        allow_v1: true,
        allow_v2: true,
    };
    let mut buf = [0u8; MAX_HEADER_BYTES];
    // buf[..consumed] has been read off the socket; what follows it is only peeked.
    let mut consumed = 0;
    loop {
        let peeked = tcp.peek(&mut buf[consumed..]).await?;
        if peeked == 0 {
            return Err(match consumed {
                0 => HeaderError::ClosedBeforeHeader,
                _ => HeaderError::ClosedInHeader,
            });
        }
        let available = consumed + peeked;
        match ProxyHeader::parse(&buf[..available], config) {
            Ok((header, length)) => {
                // An IPv4 client behind an IPv6 frontend may come as ::ffff:a.b.c.d: caps and
                // throttle count it as the IPv4 address it is.
                let source = header.proxied_address().map(|address| {
                    SocketAddr::new(address.source.ip().to_canonical(), address.source.port())
                });
                tcp.read_exact(&mut buf[consumed..length]).await?;
                return Ok(source);
            }
            Err(proxy_header::Error::BufferTooShort) if available < MAX_HEADER_BYTES => {
                // Take what is there, so the next peek waits for new bytes instead of
                // returning the same ones at once.
                tcp.read_exact(&mut buf[consumed..available]).await?;
                consumed = available;
            }
            Err(proxy_header::Error::BufferTooShort) => return Err(HeaderError::TooLong),
            Err(e) => return Err(HeaderError::Malformed(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proxy_header::ProxiedAddress;
    use tokio::io::AsyncWriteExt;

    /// A connected pair over loopback: (client side, accepted server side).
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    fn source() -> SocketAddr {
        "203.0.113.7:40000".parse().unwrap()
    }

    fn encoded(v2: bool) -> Vec<u8> {
        let header = ProxyHeader::with_address(ProxiedAddress::stream(
            source(),
            "192.0.2.1:5222".parse().unwrap(),
        ));
        let mut bytes = Vec::new();
        match v2 {
            true => header.encode_v2(&mut bytes).unwrap(),
            false => header.encode_v1(&mut bytes).unwrap(),
        }
        bytes
    }

    /// The header is consumed and the client's bytes behind it are left for the session, also
    /// when both arrive in one segment or the header comes in pieces.
    #[tokio::test]
    async fn header_is_consumed_exactly() {
        for v2 in [false, true] {
            for split in [None, Some(5)] {
                let (mut client, mut server) = pair().await;
                let mut bytes = encoded(v2);
                bytes.extend_from_slice(b"<stream:stream>");
                let writer = tokio::spawn(async move {
                    match split {
                        Some(at) => {
                            client.write_all(&bytes[..at]).await.unwrap();
                            tokio::time::sleep(std::time::Duration::from_millis(30)).await;
                            client.write_all(&bytes[at..]).await.unwrap();
                        }
                        None => client.write_all(&bytes).await.unwrap(),
                    }
                    client
                });
                assert_eq!(read_header(&mut server).await.unwrap(), Some(source()));
                let _client = writer.await.unwrap();
                let mut rest = [0u8; 15];
                server.read_exact(&mut rest).await.unwrap();
                assert_eq!(&rest, b"<stream:stream>", "v2 {v2}, split {split:?}");
            }
        }
    }

    #[tokio::test]
    async fn local_header_names_no_address() {
        let (mut client, mut server) = pair().await;
        let mut bytes = Vec::new();
        ProxyHeader::with_local().encode_v2(&mut bytes).unwrap();
        client.write_all(&bytes).await.unwrap();
        assert_eq!(read_header(&mut server).await.unwrap(), None);
    }

    #[tokio::test]
    async fn garbage_and_endless_headers_are_refused() {
        let (mut client, mut server) = pair().await;
        client.write_all(b"<?xml version='1.0'?>").await.unwrap();
        assert!(matches!(
            read_header(&mut server).await,
            Err(HeaderError::Malformed(_))
        ));

        let (mut client, mut server) = pair().await;
        // A v2 preamble announcing more than the cap.
        let mut bytes = encoded(true)[..14].to_vec();
        bytes.extend_from_slice(&1000u16.to_be_bytes());
        bytes.resize(16 + 1000, 0);
        client.write_all(&bytes).await.unwrap();
        let refused = read_header(&mut server).await;
        assert!(
            matches!(
                refused,
                Err(HeaderError::TooLong | HeaderError::Malformed(_))
            ),
            "{refused:?}"
        );

        let (mut client, mut server) = pair().await;
        client.write_all(b"PROXY TCP4 203.0.").await.unwrap();
        drop(client);
        assert!(matches!(
            read_header(&mut server).await,
            Err(HeaderError::ClosedInHeader)
        ));

        let (client, mut server) = pair().await;
        drop(client);
        assert!(matches!(
            read_header(&mut server).await,
            Err(HeaderError::ClosedBeforeHeader)
        ));
    }

    #[test]
    fn sources_match_networks_and_mapped_addresses() {
        let sources = ProxySources::new(vec![
            "10.0.0.0/8".parse().unwrap(),
            "2001:db8::/32".parse().unwrap(),
        ]);
        assert!(sources.allows("10.1.2.3".parse().unwrap()));
        assert!(sources.allows("::ffff:10.1.2.3".parse().unwrap()));
        assert!(sources.allows("2001:db8::1".parse().unwrap()));
        assert!(!sources.allows("11.0.0.1".parse().unwrap()));
        assert!(!sources.allows("127.0.0.1".parse().unwrap()));
    }
}
