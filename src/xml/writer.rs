//! Serialises elements for one stream: one buffer per stanza, so each stanza goes out in one write.
//!
//! Elements carrying [`Element::STANZA_NS`] are written in the target stream's default namespace,
//! without an `xmlns` attribute; any other namespace is declared where it changes.

use super::element::{Element, Node};
use super::ns;

/// Append `element` to `out` for a stream whose default namespace is `stream_ns`.
pub fn write_element(out: &mut Vec<u8>, element: &Element, stream_ns: &str) {
    write_inner(out, element, stream_ns, Element::STANZA_NS);
}

fn write_inner(out: &mut Vec<u8>, element: &Element, stream_ns: &str, inherited_ns: &str) {
    // The XML namespace must not be declared as a default namespace (Namespaces in XML 1.0,
    // section 3; parsers refuse it): an element in it (`<xml:x/>` from a peer) keeps the
    // predeclared `xml:` prefix, and its children see the default namespace unchanged.
    let xml_prefixed = element.ns == ns::XML;
    out.push(b'<');
    if xml_prefixed {
        out.extend_from_slice(b"xml:");
    }
    out.extend_from_slice(element.name.as_bytes());
    if !xml_prefixed && element.ns != inherited_ns {
        out.extend_from_slice(b" xmlns='");
        let uri = if element.ns.is_empty() {
            stream_ns
        } else {
            &element.ns
        };
        escape_attr_into(out, uri);
        out.push(b'\'');
    }
    for (i, attr) in element.attrs.iter().enumerate() {
        out.push(b' ');
        match attr.ns.as_deref() {
            None => {}
            Some(ns::XML) => out.extend_from_slice(b"xml:"),
            Some(other) => {
                // Rare in stanzas: declare a prefix local to this element.
                let prefix = format!("a{i}");
                out.extend_from_slice(b"xmlns:");
                out.extend_from_slice(prefix.as_bytes());
                out.extend_from_slice(b"='");
                escape_attr_into(out, other);
                out.extend_from_slice(b"' ");
                out.extend_from_slice(prefix.as_bytes());
                out.push(b':');
            }
        }
        out.extend_from_slice(attr.name.as_bytes());
        out.extend_from_slice(b"='");
        escape_attr_into(out, &attr.value);
        out.push(b'\'');
    }
    if element.children.is_empty() {
        out.extend_from_slice(b"/>");
        return;
    }
    out.push(b'>');
    let default_ns = if xml_prefixed {
        inherited_ns
    } else {
        &element.ns
    };
    for child in &element.children {
        match child {
            Node::Element(e) => write_inner(out, e, stream_ns, default_ns),
            Node::Text(t) => escape_into(out, t),
        }
    }
    out.extend_from_slice(b"</");
    if xml_prefixed {
        out.extend_from_slice(b"xml:");
    }
    out.extend_from_slice(element.name.as_bytes());
    out.push(b'>');
}

/// Escape an attribute value (single-quoted) into `out`. Tabs and line breaks become character
/// references: a parser would otherwise normalise them to spaces (XML 1.0 section 3.3.3).
pub fn escape_attr_into(out: &mut Vec<u8>, value: &str) {
    escape(out, value, true)
}

/// Escape text content into `out`.
pub fn escape_into(out: &mut Vec<u8>, text: &str) {
    escape(out, text, false)
}

fn escape(out: &mut Vec<u8>, text: &str, in_attribute: bool) {
    let bytes = text.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let replacement: &[u8] = match b {
            b'<' => b"&lt;",
            b'>' => b"&gt;",
            b'&' => b"&amp;",
            b'\'' => b"&apos;",
            b'"' => b"&quot;",
            b'\r' => b"&#13;",
            b'\n' if in_attribute => b"&#10;",
            b'\t' if in_attribute => b"&#9;",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(replacement);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
}

/// The broker's stream header (the response to a peer's header).
pub fn stream_header(out: &mut Vec<u8>, stream_ns: &str, from: &str, to: Option<&str>, id: &str) {
    out.extend_from_slice(b"<?xml version='1.0'?><stream:stream xmlns='");
    out.extend_from_slice(stream_ns.as_bytes());
    out.extend_from_slice(b"' xmlns:stream='http://etherx.jabber.org/streams' from='");
    escape_attr_into(out, from);
    if let Some(to) = to {
        out.extend_from_slice(b"' to='");
        escape_attr_into(out, to);
    }
    out.extend_from_slice(b"' id='");
    escape_attr_into(out, id);
    out.extend_from_slice(b"' version='1.0' xml:lang='en'>");
}

/// `<stream:error>` with `condition` (first child, as GenieACS reads it) and `</stream:stream>`.
pub fn stream_error(out: &mut Vec<u8>, condition: &str, text: Option<&str>) {
    out.extend_from_slice(b"<stream:error><");
    out.extend_from_slice(condition.as_bytes());
    out.extend_from_slice(b" xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>");
    if let Some(text) = text {
        out.extend_from_slice(b"<text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>");
        escape_into(out, text);
        out.extend_from_slice(b"</text>");
    }
    out.extend_from_slice(b"</stream:error></stream:stream>");
}

pub const STREAM_FOOTER: &[u8] = b"</stream:stream>";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::{Frame, Framer, FramerLimits};

    #[test]
    fn stanza_namespace_follows_the_target_stream() {
        let iq = Element::stanza("iq")
            .with_attr("type", "get")
            .with_attr("id", "a'b")
            .with_child(
                Element::new(ns::CONN_REQ, "connectionRequest")
                    .with_child(Element::new(ns::CONN_REQ, "username").with_text("u<&>")),
            );
        let mut out = Vec::new();
        write_element(&mut out, &iq, ns::COMPONENT);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "<iq type='get' id='a&apos;b'><connectionRequest xmlns='urn:broadband-forum-org:cwmp:xmppConnReq-1-0'><username>u&lt;&amp;&gt;</username></connectionRequest></iq>"
        );
    }

    #[test]
    fn tabs_and_newlines_in_attributes_survive_a_round_trip() {
        // Found by fuzzing (fuzz/regressions/framer-writer-attr-tab-newline, -xmlns-newline).
        let element = Element::new("urn:x\nwith-newline", "message")
            .with_attr("a", "\t")
            .with_attr("b", "x\ny");
        let mut out = b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>".to_vec();
        write_element(&mut out, &element, ns::CLIENT);
        let mut framer = Framer::new(FramerLimits::default(), ns::CLIENT);
        let mut input = &out[..];
        assert!(matches!(
            framer.next_frame(&mut input),
            Ok(Some(Frame::StreamOpen(_)))
        ));
        let Ok(Some(Frame::Stanza(parsed))) = framer.next_frame(&mut input) else {
            panic!("no stanza")
        };
        assert_eq!(parsed, element);
    }

    #[test]
    fn round_trips_through_the_framer() {
        let original = b"<iq id='x' type='error' xml:lang='en'><error type='cancel'><not-autorized xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/><text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>odd &amp; old</text></error></iq>";
        let mut framer = Framer::new(FramerLimits::default(), ns::CLIENT);
        let mut header: &[u8] = b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>";
        assert!(matches!(
            framer.next_frame(&mut header),
            Ok(Some(Frame::StreamOpen(_)))
        ));
        let mut input: &[u8] = original;
        let Ok(Some(Frame::Stanza(el))) = framer.next_frame(&mut input) else {
            panic!("no stanza")
        };
        let mut out = Vec::new();
        write_element(&mut out, &el, ns::CLIENT);
        assert_eq!(out, original.to_vec());
    }
}
