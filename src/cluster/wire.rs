//! The cluster's message encoding: one header line, then the stanza as XML.
//!
//! `crb1 <kind> <node> <jid or -> <stamp>\n<stanza>`: `node` is the sender (requester of a
//! request, holder of an ack or answer, binder of a `bound` event), `jid` the full JID a
//! presence event is about, `stamp` the bind time in microseconds since the Unix epoch (0 when
//! unused). Node names and normalised JIDs hold no spaces or newlines, so the line splits
//! unambiguously. The stanza is written for a `jabber:client` stream and parsed back with the
//! broker's own framer (with its limits), so a peer node's bytes get the same checks as a
//! socket's.

use crate::xml::{ns, writer, Element, Frame, Framer, FramerLimits};
use bytes::Bytes;
use std::cell::RefCell;

const MAGIC: &str = "crb1";
const STREAM_OPEN: &[u8] =
    b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A connection request (a NATS request: its reply is an `Ack` or an `Answer`).
    Request,
    /// The holder took the request; its answer follows on the requester's inbox.
    Ack,
    /// The one answer to a request (the CPE's, or the holder's own error).
    Answer,
    /// A session for `jid` was bound on `node` at `stamp`.
    Bound,
    /// That session ended.
    Unbound,
    /// Any other stanza (no answer is tracked).
    Stanza,
}

impl Kind {
    fn word(self) -> &'static str {
        match self {
            Kind::Request => "req",
            Kind::Ack => "ack",
            Kind::Answer => "ans",
            Kind::Bound => "bound",
            Kind::Unbound => "unbound",
            Kind::Stanza => "msg",
        }
    }

    fn from_word(word: &str) -> Option<Kind> {
        Some(match word {
            "req" => Kind::Request,
            "ack" => Kind::Ack,
            "ans" => Kind::Answer,
            "bound" => Kind::Bound,
            "unbound" => Kind::Unbound,
            "msg" => Kind::Stanza,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header<'a> {
    pub kind: Kind,
    pub node: &'a str,
    pub jid: &'a str,
    pub stamp: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("not a crbroker cluster message")]
    NotOurs,
    #[error("malformed header line")]
    Header,
    #[error("stanza: {0}")]
    Stanza(String),
}

/// One message: the header line and, when given, the stanza.
pub fn encode(header: Header<'_>, stanza: Option<&Element>) -> Bytes {
    let mut out = Vec::with_capacity(64 + stanza.map_or(0, |_| 512));
    let jid = if header.jid.is_empty() {
        "-"
    } else {
        header.jid
    };
    out.extend_from_slice(
        format!(
            "{MAGIC} {} {} {jid} {}\n",
            header.kind.word(),
            header.node,
            header.stamp
        )
        .as_bytes(),
    );
    if let Some(stanza) = stanza {
        writer::write_element(&mut out, stanza, ns::CLIENT);
    }
    Bytes::from(out)
}

/// The header and the stanza bytes after it.
pub fn decode(payload: &[u8]) -> Result<(Header<'_>, &[u8]), WireError> {
    let end = payload
        .iter()
        .position(|&b| b == b'\n')
        .ok_or(WireError::Header)?;
    let line = std::str::from_utf8(&payload[..end]).map_err(|_| WireError::Header)?;
    let mut words = line.split(' ');
    if words.next() != Some(MAGIC) {
        return Err(WireError::NotOurs);
    }
    let kind = words.next().and_then(Kind::from_word);
    let node = words.next();
    let jid = words.next();
    let stamp = words.next().and_then(|s| s.parse().ok());
    match (kind, node, jid, stamp, words.next()) {
        (Some(kind), Some(node), Some(jid), Some(stamp), None) if !node.is_empty() => Ok((
            Header {
                kind,
                node,
                jid: if jid == "-" { "" } else { jid },
                stamp,
            },
            &payload[end + 1..],
        )),
        _ => Err(WireError::Header),
    }
}

thread_local! {
    /// A framer inside an open stream, with the limits it was built for, reused for the stanzas
    /// of successive messages on this thread: building a parser and parsing a stream header per
    /// message cost more than the stanza itself. A framer is put back only after a message that
    /// held exactly one complete stanza, so it is always at a stanza boundary.
    static FRAMER: RefCell<Option<(FramerLimits, Framer)>> = const { RefCell::new(None) };
}

/// Parse the one stanza of a message body.
pub fn parse_stanza(body: &[u8], limits: FramerLimits) -> Result<Element, WireError> {
    let cached = FRAMER
        .with(|cell| cell.borrow_mut().take())
        .filter(|(built_for, _)| *built_for == limits);
    let mut framer = match cached {
        Some((_, framer)) => framer,
        None => open_stream(limits)?,
    };
    let mut input = body;
    let parsed = match framer.next_frame(&mut input) {
        Ok(Some(Frame::Stanza(element))) if input.iter().all(u8::is_ascii_whitespace) => {
            Ok(element)
        }
        Ok(Some(_)) | Ok(None) => Err(WireError::Stanza("not exactly one stanza".into())),
        Err(e) => Err(WireError::Stanza(e.to_string())),
    };
    if parsed.is_ok() {
        FRAMER.with(|cell| *cell.borrow_mut() = Some((limits, framer)));
    }
    parsed
}

/// A framer that has read the stream header the cluster's stanzas are parsed in.
fn open_stream(limits: FramerLimits) -> Result<Framer, WireError> {
    let mut framer = Framer::new(limits, ns::CLIENT);
    let mut header = STREAM_OPEN;
    match framer.next_frame(&mut header) {
        Ok(Some(Frame::StreamOpen(_))) => Ok(framer),
        other => Err(WireError::Stanza(format!("stream header: {other:?}"))),
    }
}

/// Microseconds since the Unix epoch: the bind stamp that orders sessions across nodes.
pub fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> Element {
        Element::stanza("iq")
            .with_attr("type", "get")
            .with_attr("id", "crb-ab-1")
            .with_attr("to", "cpe-1@example.net/cwmp")
            .with_attr("from", "acs.example.net")
            .with_child(
                Element::new(ns::CONN_REQ, "connectionRequest")
                    .with_child(Element::new(ns::CONN_REQ, "username").with_text("u & <p>")),
            )
    }

    #[test]
    fn a_stanza_survives_the_round_trip() {
        let header = Header {
            kind: Kind::Request,
            node: "node-a",
            jid: "",
            stamp: 0,
        };
        let bytes = encode(header, Some(&request()));
        let (decoded, body) = decode(&bytes).unwrap();
        assert_eq!(decoded, header);
        // The framer does not keep attribute order (XML gives it no meaning).
        let sorted = |mut e: Element| {
            e.attrs.sort_by(|a, b| a.name.cmp(&b.name));
            e
        };
        let parsed = parse_stanza(body, FramerLimits::default()).unwrap();
        assert_eq!(sorted(parsed), sorted(request()));
    }

    #[test]
    fn presence_events_carry_jid_and_stamp() {
        let header = Header {
            kind: Kind::Bound,
            node: "b",
            jid: "cpe-1@example.net/cwmp",
            stamp: 1_700_000_000_000_001,
        };
        let bytes = encode(header, None);
        let (decoded, body) = decode(&bytes).unwrap();
        assert_eq!(decoded, header);
        assert!(body.is_empty());
    }

    #[test]
    fn successive_messages_share_a_framer_that_bad_ones_do_not_poison() {
        let limits = FramerLimits::default();
        let message = |id: &str| {
            let mut stanza = request();
            stanza.set_attr("id", id);
            encode(
                Header {
                    kind: Kind::Request,
                    node: "n",
                    jid: "",
                    stamp: 0,
                },
                Some(&stanza),
            )
        };
        let bad: [&[u8]; 4] = [
            b"<iq><unclosed>",
            b"<iq/><iq/>",
            b"  <iq",
            b"</stream:stream>",
        ];
        for (round, bad) in bad.iter().enumerate() {
            for i in 0..3 {
                let id = format!("r{round}-{i}");
                let bytes = message(&id);
                let (_, body) = decode(&bytes).unwrap();
                let parsed = parse_stanza(body, limits).unwrap();
                assert_eq!(parsed.attr("id"), Some(id.as_str()));
            }
            assert!(
                parse_stanza(bad, limits).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let bytes = message("after");
        let (_, body) = decode(&bytes).unwrap();
        assert_eq!(
            parse_stanza(body, limits).unwrap().attr("id"),
            Some("after")
        );
    }

    #[test]
    fn garbage_is_refused_not_trusted() {
        assert_eq!(decode(b"hello\n").unwrap_err(), WireError::NotOurs);
        assert_eq!(decode(b"crb1 req n\n").unwrap_err(), WireError::Header);
        assert_eq!(decode(b"crb1 nope n - 0\n").unwrap_err(), WireError::Header);
        assert_eq!(decode(b"crb1 req n - 0").unwrap_err(), WireError::Header);
        assert!(parse_stanza(b"<iq><unclosed>", FramerLimits::default()).is_err());
        assert!(parse_stanza(b"<iq/><iq/>", FramerLimits::default()).is_err());
        let deep = "<a>".repeat(100) + &"</a>".repeat(100);
        assert!(parse_stanza(deep.as_bytes(), FramerLimits::default()).is_err());
    }
}
