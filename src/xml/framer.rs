//! Sans-I/O stream framer: bytes in, [`Frame`]s out, limits enforced as bytes arrive.
//!
//! The framer owns an `rxml` parser for one XML stream (a new framer after each stream restart).
//! It hands out the stream header, each complete top-level element, and the stream footer. Size,
//! depth and attribute limits are checked while parsing, so a hostile peer can make the broker hold
//! at most about one stanza limit of memory. DTDs, entities, comments and processing instructions
//! are refused by `rxml` (restricted XML, RFC 6120 section 11.1); nothing is ever expanded.

use super::element::{Attr, Element, Node};
use super::ns;
use rxml::error::EndOrError;
use rxml::{Event, Parse, Parser, WithOptions};

/// Longest name, attribute value or text chunk rxml buffers at once (a JID is at most 3071 bytes).
const MAX_TOKEN_BYTES: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FramerLimits {
    pub max_stanza_bytes: usize,
    pub max_depth: usize,
    pub max_attributes: usize,
    pub max_header_bytes: usize,
    /// Most nodes (elements, attributes, text nodes) in one stanza. `<b/>` is 4 bytes on the wire
    /// but about a hundred in the tree, and `a=''` five bytes but fifty, so the byte limit alone
    /// would let a stanza of tiny nodes hold many times its size in memory (found by fuzzing).
    pub max_nodes: usize,
}

impl Default for FramerLimits {
    fn default() -> Self {
        FramerLimits {
            max_stanza_bytes: 16 * 1024,
            max_depth: 16,
            max_attributes: 32,
            max_header_bytes: 2048,
            max_nodes: 256,
        }
    }
}

/// The attributes of a peer's `<stream:stream>` header.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamHeader {
    pub to: Option<String>,
    pub from: Option<String>,
    pub version: Option<String>,
    /// The default namespace the header declared (`jabber:client`, `jabber:component:accept`).
    pub content_ns: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    StreamOpen(StreamHeader),
    Stanza(Element),
    StreamClose,
}

/// Why a stream cannot go on; each maps to the stream error condition it causes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("XML not well-formed: {0}")]
    NotWellFormed(String),
    #[error("restricted XML (DTD, entity, comment or processing instruction)")]
    RestrictedXml,
    #[error("{0}")]
    PolicyViolation(&'static str),
    #[error("the stream element is not in the streams namespace")]
    InvalidNamespace,
    #[error("the first element is not a stream header")]
    NotAStream,
}

impl FrameError {
    /// The RFC 6120 stream error condition for this error.
    pub fn condition(&self) -> &'static str {
        match self {
            FrameError::NotWellFormed(_) => "not-well-formed",
            FrameError::RestrictedXml => "restricted-xml",
            FrameError::PolicyViolation(_) => "policy-violation",
            FrameError::InvalidNamespace | FrameError::NotAStream => "invalid-namespace",
        }
    }
}

pub struct Framer {
    parser: Parser,
    limits: FramerLimits,
    /// The content namespace of this stream: elements in it get the empty namespace.
    content_ns: &'static str,
    /// Open elements of the stanza being built (root first).
    stack: Vec<Element>,
    header_seen: bool,
    /// Whether the first byte (which must be `<`) has arrived.
    markup_started: bool,
    /// Bytes consumed since the last stanza boundary (or since the start, before the header).
    pending_bytes: usize,
    /// Raw header bytes kept until the header is parsed, to read its default namespace.
    header_raw: Vec<u8>,
    /// Elements, attributes and text nodes in the stanza being built.
    nodes: usize,
    failed: bool,
}

impl Framer {
    /// A framer for a stream whose stanzas are in `content_ns` (see [`ns::CLIENT`], [`ns::COMPONENT`]).
    pub fn new(limits: FramerLimits, content_ns: &'static str) -> Framer {
        // Bounds what rxml buffers for one name, attribute value or text chunk. rxml reserves this
        // much scratch space whenever it starts a token, so keep it small: longer text is split
        // into several events, and no attribute value in these streams (JIDs, ids) needs more.
        let options = rxml::parser::Options {
            max_token_length: limits.max_stanza_bytes.clamp(256, MAX_TOKEN_BYTES),
            ..Default::default()
        };
        Framer {
            parser: Parser::with_options(options),
            limits,
            content_ns,
            stack: Vec::new(),
            header_seen: false,
            markup_started: false,
            pending_bytes: 0,
            header_raw: Vec::new(),
            nodes: 0,
            failed: false,
        }
    }

    /// Parse from `input` until one frame is complete (returned, with `input` advanced past what was
    /// used) or `input` is used up (`Ok(None)`: feed more). Call again while it returns frames.
    pub fn next_frame(&mut self, input: &mut &[u8]) -> Result<Option<Frame>, FrameError> {
        if self.failed {
            return Err(FrameError::PolicyViolation("stream already failed"));
        }
        let result = self.next_frame_inner(input);
        if result.is_err() {
            self.failed = true;
            self.stack = Vec::new();
            self.parser.release_temporaries();
        }
        result
    }

    fn next_frame_inner(&mut self, input: &mut &[u8]) -> Result<Option<Frame>, FrameError> {
        if !self.markup_started {
            self.check_prolog(input)?;
        }
        loop {
            let before = *input;
            let event = self.parser.parse(input, false);
            let consumed = before.len() - input.len();
            self.pending_bytes += consumed;
            if !self.header_seen {
                self.header_raw.extend_from_slice(&before[..consumed]);
                if self.pending_bytes > self.limits.max_header_bytes {
                    return Err(FrameError::PolicyViolation("stream header too large"));
                }
            } else if self.pending_bytes > self.limits.max_stanza_bytes {
                return Err(FrameError::PolicyViolation("stanza too large"));
            }
            match event {
                Ok(Some(event)) => {
                    if let Some(frame) = self.on_event(event)? {
                        return Ok(Some(frame));
                    }
                }
                Ok(None) => return Ok(Some(Frame::StreamClose)),
                Err(EndOrError::NeedMoreData) => return Ok(None),
                Err(EndOrError::Error(e)) => return Err(classify(&e)),
            }
        }
    }

    /// The stream must open with `<` (rxml refuses anything else there, even whitespace or a
    /// byte order mark), but rxml reports other bytes only once the text they start ends, at the
    /// next `<`: a peer speaking another protocol (a PROXY protocol header to a listener without
    /// `proxy_protocol`, an HTTP request) would hold its connection until the pre-auth timeout.
    /// So the first byte is checked here.
    fn check_prolog(&mut self, input: &[u8]) -> Result<(), FrameError> {
        match input.first() {
            None => Ok(()),
            Some(b'<') => {
                self.markup_started = true;
                Ok(())
            }
            Some(_) => Err(FrameError::NotWellFormed(
                "the stream does not start with '<'".into(),
            )),
        }
    }

    fn on_event(&mut self, event: Event) -> Result<Option<Frame>, FrameError> {
        match event {
            Event::XmlDeclaration(..) => Ok(None),
            Event::StartElement(_, (ns_uri, name), attrs) => {
                if !self.header_seen {
                    if name.as_str() != "stream" {
                        return Err(FrameError::NotAStream);
                    }
                    if ns_uri.as_str() != ns::STREAM {
                        return Err(FrameError::InvalidNamespace);
                    }
                    let content_ns = match default_namespace(&self.header_raw) {
                        Some(Err(())) => {
                            return Err(FrameError::NotWellFormed(
                                "repeated or malformed xmlns on the stream header".into(),
                            ))
                        }
                        Some(Ok(ns)) => Some(ns),
                        None => None,
                    };
                    let mut header = StreamHeader {
                        content_ns,
                        ..StreamHeader::default()
                    };
                    for ((attr_ns, attr_name), value) in attrs {
                        if !attr_ns.is_none() {
                            continue;
                        }
                        match attr_name.as_str() {
                            "to" => header.to = Some(value),
                            "from" => header.from = Some(value),
                            "version" => header.version = Some(value),
                            _ => {}
                        }
                    }
                    self.header_seen = true;
                    self.header_raw = Vec::new();
                    self.pending_bytes = 0;
                    return Ok(Some(Frame::StreamOpen(header)));
                }
                if self.stack.len() >= self.limits.max_depth {
                    return Err(FrameError::PolicyViolation("elements nested too deeply"));
                }
                if attrs.len() > self.limits.max_attributes {
                    return Err(FrameError::PolicyViolation("too many attributes"));
                }
                let ns_str = ns_uri.as_str();
                let element_ns = if ns_str == self.content_ns {
                    String::new()
                } else {
                    ns_str.to_string()
                };
                self.add_nodes(1 + attrs.len())?;
                let mut element = Element {
                    ns: element_ns,
                    name: name.as_str().to_string(),
                    attrs: Vec::with_capacity(attrs.len()),
                    children: Vec::new(),
                };
                for ((attr_ns, attr_name), value) in attrs {
                    element.attrs.push(Attr {
                        ns: (!attr_ns.is_none()).then(|| attr_ns.as_str().to_string()),
                        name: attr_name.as_str().to_string(),
                        value,
                    });
                }
                self.stack.push(element);
                Ok(None)
            }
            Event::Text(_, text) => {
                match self.stack.last_mut() {
                    Some(parent) => match parent.children.last_mut() {
                        Some(Node::Text(existing)) => existing.push_str(&text),
                        _ => {
                            parent.children.push(Node::Text(text));
                            self.add_nodes(1)?;
                        }
                    },
                    None => {
                        // Between stanzas only whitespace (keepalives) is allowed.
                        if !text.bytes().all(|b| b.is_ascii_whitespace()) {
                            return Err(FrameError::NotWellFormed(
                                "text at stream level".to_string(),
                            ));
                        }
                        self.pending_bytes = 0;
                    }
                }
                Ok(None)
            }
            Event::EndElement(_) => match self.stack.pop() {
                None => Ok(Some(Frame::StreamClose)),
                Some(done) => match self.stack.last_mut() {
                    Some(parent) => {
                        parent.children.push(Node::Element(done));
                        Ok(None)
                    }
                    None => {
                        self.pending_bytes = 0;
                        self.nodes = 0;
                        Ok(Some(Frame::Stanza(done)))
                    }
                },
            },
        }
    }

    /// Count nodes (elements, attributes, text nodes) of the stanza being built against the limit.
    fn add_nodes(&mut self, count: usize) -> Result<(), FrameError> {
        self.nodes += count;
        if self.nodes > self.limits.max_nodes {
            return Err(FrameError::PolicyViolation("too many elements"));
        }
        Ok(())
    }

    /// Give back the parser's scratch buffers while the stream idles.
    pub fn release_temporaries(&mut self) {
        if self.stack.is_empty() {
            self.stack = Vec::new();
        }
        self.parser.release_temporaries();
    }

    /// True while a stanza is partly received.
    pub fn in_stanza(&self) -> bool {
        !self.stack.is_empty()
    }
}

/// The stream error for an rxml error. Decided from the error alone, so the condition does not
/// depend on how the input was split into reads (a fuzzing finding). rxml refuses comments and
/// processing instructions as restricted XML itself; a DTD (`<!DOCTYPE`, `<!ENTITY`) shows up as
/// `<!` followed by neither `[CDATA[` nor `--`, which it reports as this syntax error.
fn classify(error: &rxml::Error) -> FrameError {
    match error {
        rxml::Error::RestrictedXml(_) => FrameError::RestrictedXml,
        rxml::Error::InvalidSyntax(what) if *what == "malformed cdata or comment section start" => {
            FrameError::RestrictedXml
        }
        other => FrameError::NotWellFormed(other.to_string()),
    }
}

/// The value of the default namespace declaration (`xmlns='...'`) on the stream element, read
/// from the raw header bytes (rxml resolves namespaces but does not report declarations).
/// Attributes are tokenised with their quotes, so an attribute value cannot pass for one.
/// `Some(Err(()))` when the declaration is repeated or cannot be decoded.
fn default_namespace(raw: &[u8]) -> Option<Result<String, ()>> {
    let text = std::str::from_utf8(raw).ok()?;
    // The stream element's start tag: the last `<` that is not `<?` or `<!` (the XML declaration
    // and anything else before it were already parsed, or refused, by rxml).
    let start = text
        .match_indices('<')
        .map(|(i, _)| i)
        .rfind(|&i| !matches!(text.as_bytes().get(i + 1), Some(b'?') | Some(b'!')))?;
    let mut rest = &text[start + 1..];
    // Skip the element name.
    let name_end = rest.find(|c: char| c.is_ascii_whitespace() || c == '>' || c == '/')?;
    rest = &rest[name_end..];
    let mut found = None;
    loop {
        rest = rest.trim_start();
        if rest.is_empty() || rest.starts_with('>') || rest.starts_with('/') {
            return found;
        }
        let eq = rest.find('=')?;
        let name = rest[..eq].trim_end();
        rest = rest[eq + 1..].trim_start();
        let quote = rest.chars().next()?;
        if quote != '"' && quote != '\'' {
            return None;
        }
        let end = rest[1..].find(quote)?;
        let value = &rest[1..1 + end];
        if name == "xmlns" {
            if found.is_some() {
                // Declared twice: not well-formed XML; never guess which one counts.
                return Some(Err(()));
            }
            found = Some(decode_references(value).ok_or(()));
        }
        rest = &rest[end + 2..];
    }
}

/// The header's `xmlns` value with references expanded. A literal line break or tab in it is
/// refused rather than normalised: no client sends one, and the exact normalisation (XML 1.0
/// section 3.3.3, with line ends split across reads) is the parser's business, not ours.
fn decode_references(value: &str) -> Option<String> {
    fn push_literal(out: &mut String, literal: &str) -> Option<()> {
        if literal.contains(['\r', '\n', '\t']) {
            return None;
        }
        out.push_str(literal);
        Some(())
    }
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(amp) = rest.find('&') {
        push_literal(&mut out, &rest[..amp])?;
        let semi = rest[amp..].find(';')? + amp;
        let name = &rest[amp + 1..semi];
        let decoded = match name {
            "amp" => '&',
            "lt" => '<',
            "gt" => '>',
            "apos" => '\'',
            "quot" => '"',
            _ => {
                let code = if let Some(hex) = name.strip_prefix("#x") {
                    u32::from_str_radix(hex, 16).ok()?
                } else {
                    name.strip_prefix('#')?.parse().ok()?
                };
                char::from_u32(code)?
            }
        };
        out.push(decoded);
        rest = &rest[semi + 1..];
    }
    push_literal(&mut out, rest)?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &[u8] = b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='example.net' version='1.0'>";

    fn frames(framer: &mut Framer, mut input: &[u8]) -> Result<Vec<Frame>, FrameError> {
        let mut out = Vec::new();
        while let Some(frame) = framer.next_frame(&mut input)? {
            out.push(frame);
        }
        Ok(out)
    }

    fn client_framer() -> Framer {
        Framer::new(FramerLimits::default(), ns::CLIENT)
    }

    #[test]
    fn header_stanzas_and_footer() {
        let mut framer = client_framer();
        let mut input = HEADER.to_vec();
        input.extend_from_slice(b" <iq type='get' id='1'><ping xmlns='urn:xmpp:ping'/></iq>\n<presence/></stream:stream>");
        let frames = frames(&mut framer, &input).unwrap();
        assert_eq!(frames.len(), 4, "{frames:?}");
        match &frames[0] {
            Frame::StreamOpen(h) => {
                assert_eq!(h.to.as_deref(), Some("example.net"));
                assert_eq!(h.version.as_deref(), Some("1.0"));
                assert_eq!(h.content_ns.as_deref(), Some(ns::CLIENT));
            }
            other => panic!("{other:?}"),
        }
        match &frames[1] {
            Frame::Stanza(iq) => {
                assert_eq!(iq.ns, "");
                assert_eq!(iq.attr("id"), Some("1"));
                assert!(iq.first_child().unwrap().is("ping", ns::PING));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(&frames[2], Frame::Stanza(p) if p.name == "presence"));
        assert_eq!(frames[3], Frame::StreamClose);
    }

    #[test]
    fn text_before_the_stream_header_is_refused_at_once() {
        // A PROXY protocol header sent to a listener without proxy_protocol, or any other
        // non-XML greeting: not well-formed as soon as its first line is in, not at a timeout.
        for greeting in [
            &b"PROXY TCP4 1.2.3.4 5.6.7.8 1111 5222\r\n"[..],
            b"GET / HTTP/1.1\r\n",
            b"hello\n",
            b" <?xml version='1.0'?>",
        ] {
            let result = frames(&mut client_framer(), greeting);
            assert!(
                result.is_err(),
                "{:?}: {result:?}",
                String::from_utf8_lossy(greeting)
            );
        }
    }

    #[test]
    fn byte_at_a_time_gives_the_same_frames() {
        let mut input = HEADER.to_vec();
        input.extend_from_slice(b"<message to='a@b'><body>x &amp; y</body></message>");
        let whole = frames(&mut client_framer(), &input).unwrap();
        let mut framer = client_framer();
        let mut split = Vec::new();
        for byte in &input {
            split.extend(frames(&mut framer, std::slice::from_ref(byte)).unwrap());
        }
        assert_eq!(whole, split);
    }

    #[test]
    fn oversized_stanza_is_a_policy_violation() {
        let mut framer = client_framer();
        frames(&mut framer, HEADER).unwrap();
        let big = format!("<message><body>{}</body></message>", "a".repeat(20_000));
        let err = frames(&mut framer, big.as_bytes()).unwrap_err();
        assert_eq!(err.condition(), "policy-violation");
    }

    #[test]
    fn doctype_and_entities_are_restricted() {
        let mut framer = client_framer();
        let err = frames(
            &mut framer,
            b"<?xml version='1.0'?><!DOCTYPE lolz [<!ENTITY lol 'lol'>]><stream:stream>",
        )
        .unwrap_err();
        assert_eq!(err.condition(), "restricted-xml", "{err:?}");
        let mut framer = client_framer();
        frames(&mut framer, HEADER).unwrap();
        let err = frames(&mut framer, b"<message><!-- hi --></message>").unwrap_err();
        assert_eq!(err.condition(), "restricted-xml", "{err:?}");
    }

    #[test]
    fn deep_nesting_and_many_attributes_are_refused() {
        let mut framer = client_framer();
        frames(&mut framer, HEADER).unwrap();
        let deep = "<a>".repeat(40);
        assert_eq!(
            frames(&mut framer, deep.as_bytes())
                .unwrap_err()
                .condition(),
            "policy-violation"
        );
        let mut framer = client_framer();
        frames(&mut framer, HEADER).unwrap();
        let attrs: String = (0..100).map(|i| format!(" a{i}='x'")).collect();
        let many = format!("<message{attrs}/>");
        assert_eq!(
            frames(&mut framer, many.as_bytes())
                .unwrap_err()
                .condition(),
            "policy-violation"
        );
    }

    #[test]
    fn error_condition_does_not_depend_on_chunking() {
        // Found by fuzzing (fuzz/regressions/framer-error-condition-depends-on-chunking).
        let mut input = HEADER.to_vec();
        input.extend_from_slice(b"<message></x><!---->");
        let whole = frames(&mut client_framer(), &input).unwrap_err();
        let mut framer = client_framer();
        let mut split = None;
        for byte in &input {
            if let Err(e) = frames(&mut framer, std::slice::from_ref(byte)) {
                split = Some(e);
                break;
            }
        }
        assert_eq!(whole.condition(), "not-well-formed");
        assert_eq!(split.unwrap().condition(), whole.condition());
    }

    #[test]
    fn many_tiny_elements_hit_the_node_limit() {
        // Found by fuzzing (fuzz/regressions/framer-memory-50x-stanza-limit): 4 bytes on the wire
        // per element must not become ~100 bytes of tree each without a bound.
        let mut framer = client_framer();
        frames(&mut framer, HEADER).unwrap();
        let tiny = format!("<message>{}</message>", "<b/>".repeat(1000));
        assert!(tiny.len() < FramerLimits::default().max_stanza_bytes);
        let err = frames(&mut framer, tiny.as_bytes()).unwrap_err();
        assert_eq!(err.condition(), "policy-violation");
    }

    #[test]
    fn header_namespace_references_are_decoded_and_raw_whitespace_refused() {
        // Found by fuzzing: the parser normalises raw CR/LF/TAB in the value; we refuse them.
        assert_eq!(decode_references("j\r\naclient"), None);
        assert_eq!(decode_references("a\tb"), None);
        assert_eq!(decode_references("c&#10;d").as_deref(), Some("c\nd"));
        assert_eq!(
            decode_references("jabber&#58;client").as_deref(),
            Some("jabber:client")
        );
        assert_eq!(decode_references("x&bogus;"), None);
    }

    #[test]
    fn malformed_xml_is_not_well_formed() {
        let mut framer = client_framer();
        frames(&mut framer, HEADER).unwrap();
        let err = frames(&mut framer, b"<message></presence>").unwrap_err();
        assert_eq!(err.condition(), "not-well-formed");
    }

    #[test]
    fn wrong_stream_namespace() {
        let mut framer = client_framer();
        let err = frames(&mut framer, b"<stream:stream xmlns:stream='urn:wrong'>").unwrap_err();
        assert_eq!(err.condition(), "invalid-namespace");
    }
}
