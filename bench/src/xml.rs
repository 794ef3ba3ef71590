//! Just enough XML for a load generator: cut an XMPP byte stream into its stream header, its
//! top-level elements and its close tag, and read a few attributes and names out of an element.
//!
//! The framer tracks tag depth (`<x>`, `<x/>`, `</x>`, quotes inside tags, `<?..?>`, comments and
//! CDATA), so stanzas split across reads or several stanzas in one read come out whole. It does
//! not validate XML or resolve entities: the servers it talks to are known ones.

use std::fmt;

/// Largest amount of unframed input tolerated (a server sending more without finishing one
/// element is not one this tool measures).
const MAX_BUFFERED: usize = 1 << 20;

#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// `<stream:stream ...>` (the start tag only).
    Header(String),
    /// One complete top-level element (a stanza, `<stream:features>`, `<stream:error>`, ...).
    Element(String),
    /// `</stream:stream>`.
    Close,
}

#[derive(Debug, PartialEq, Eq)]
pub struct FrameError(pub &'static str);

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for FrameError {}

#[derive(Default)]
pub struct Framer {
    buf: Vec<u8>,
    /// Start of the unconsumed input in `buf`.
    start: usize,
    /// The stream header has been seen.
    in_stream: bool,
}

impl Framer {
    pub fn new() -> Framer {
        Framer::default()
    }

    /// Forget everything (stream restart after STARTTLS or SASL).
    pub fn reset(&mut self) {
        self.buf.clear();
        self.start = 0;
        self.in_stream = false;
    }

    /// Bytes received but not yet returned in a frame.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }

    pub fn push(&mut self, data: &[u8]) {
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > 4096 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// Give memory back when nothing is buffered (idle sessions keep no buffer).
    pub fn shrink_if_idle(&mut self) {
        if self.start == self.buf.len() && self.buf.capacity() > 0 {
            self.buf = Vec::new();
            self.start = 0;
        }
    }

    /// The next complete frame, or `None` when more input is needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        loop {
            let data = &self.buf[self.start..];
            let Some(lt) = data.iter().position(|b| !b.is_ascii_whitespace()) else {
                // Only whitespace (keepalives): consume it.
                self.start = self.buf.len();
                return Ok(None);
            };
            if data[lt] != b'<' {
                return Err(FrameError("text at stream level"));
            }
            let data = &data[lt..];
            let base = self.start + lt;
            if data.len() < 2 {
                return self.need_more();
            }
            match data[1] {
                b'?' => match find(data, b"?>") {
                    Some(end) => {
                        self.start = base + end + 2;
                        continue;
                    }
                    None => return self.need_more(),
                },
                b'!' => match skip_markup(data) {
                    Some(end) => {
                        self.start = base + end;
                        continue;
                    }
                    None => return self.need_more(),
                },
                b'/' => {
                    let Some(end) = data.iter().position(|&b| b == b'>') else {
                        return self.need_more();
                    };
                    self.start = base + end + 1;
                    return Ok(Some(Frame::Close));
                }
                _ => {}
            }
            if !self.in_stream {
                let Some(end) = tag_end(data) else {
                    return self.need_more();
                };
                let header = text(&data[..=end]);
                self.start = base + end + 1;
                self.in_stream = true;
                return Ok(Some(Frame::Header(header)));
            }
            return match element_end(data) {
                Some(end) => {
                    let element = text(&data[..end]);
                    self.start = base + end;
                    Ok(Some(Frame::Element(element)))
                }
                None => self.need_more(),
            };
        }
    }

    fn need_more(&self) -> Result<Option<Frame>, FrameError> {
        if self.pending() > MAX_BUFFERED {
            Err(FrameError("element too large"))
        } else {
            Ok(None)
        }
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Index of the `>` closing the tag that starts at `data[0]`, skipping quoted attribute values.
fn tag_end(data: &[u8]) -> Option<usize> {
    let mut quote = None;
    for (i, &b) in data.iter().enumerate().skip(1) {
        match quote {
            Some(q) if b == q => quote = None,
            Some(_) => {}
            None if b == b'\'' || b == b'"' => quote = Some(b),
            None if b == b'>' => return Some(i),
            None => {}
        }
    }
    None
}

/// `data` starts with `<!`: the index just past the comment, CDATA section or declaration.
fn skip_markup(data: &[u8]) -> Option<usize> {
    if data.starts_with(b"<!--") {
        find(&data[4..], b"-->").map(|i| 4 + i + 3)
    } else if data.starts_with(b"<![CDATA[") {
        find(&data[9..], b"]]>").map(|i| 9 + i + 3)
    } else {
        tag_end(data).map(|i| i + 1)
    }
}

/// `data` starts with the start tag of an element: the index just past its end.
fn element_end(data: &[u8]) -> Option<usize> {
    let mut depth = 0usize;
    let mut pos = 0;
    loop {
        let lt = pos + data[pos..].iter().position(|&b| b == b'<')?;
        let rest = &data[lt..];
        if rest.len() < 2 {
            return None;
        }
        match rest[1] {
            b'/' => {
                let end = lt + rest.iter().position(|&b| b == b'>')?;
                depth = depth.checked_sub(1)?;
                pos = end + 1;
                if depth == 0 {
                    return Some(pos);
                }
            }
            b'!' | b'?' => {
                let skip = if rest[1] == b'!' {
                    skip_markup(rest)?
                } else {
                    find(rest, b"?>")? + 2
                };
                pos = lt + skip;
            }
            _ => {
                let end = lt + tag_end(rest)?;
                pos = end + 1;
                if data[end - 1] != b'/' {
                    depth += 1;
                } else if depth == 0 {
                    return Some(pos);
                }
            }
        }
    }
}

/// The element's (qualified) name: `iq`, `stream:features`, ...
pub fn name(element: &str) -> &str {
    let rest = element.strip_prefix('<').unwrap_or(element);
    let end = rest
        .find(|c: char| c.is_ascii_whitespace() || c == '/' || c == '>')
        .unwrap_or(rest.len());
    &rest[..end]
}

/// The raw (unescaped) value of attribute `key` on the element's start tag.
pub fn attr<'a>(element: &'a str, key: &str) -> Option<&'a str> {
    let end = tag_end(element.as_bytes()).unwrap_or(element.len());
    let tag = &element[..end];
    let mut rest = &tag[1 + name(tag).len()..];
    loop {
        rest = rest.trim_start();
        let eq = rest.find('=')?;
        let attr_name = rest[..eq].trim();
        let after = rest[eq + 1..].trim_start();
        let quote = after.chars().next()?;
        if quote != '\'' && quote != '"' {
            return None;
        }
        let close = after[1..].find(quote)?;
        if attr_name == key {
            return Some(&after[1..1 + close]);
        }
        rest = &after[close + 2..];
    }
}

/// The text of the first `<tag>...</tag>` inside the element (no nesting, no namespace prefix).
pub fn child_text<'a>(element: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}");
    let mut from = 0;
    loop {
        let at = from + element[from..].find(&open)?;
        let after = &element[at + open.len()..];
        match after.chars().next() {
            Some('>') => {
                let body = &after[1..];
                let close = body.find("</")?;
                return Some(&body[..close]);
            }
            Some(c) if c.is_ascii_whitespace() => {
                let gt = after.find('>')?;
                if after[..gt].ends_with('/') {
                    return Some("");
                }
                let body = &after[gt + 1..];
                let close = body.find("</")?;
                return Some(&body[..close]);
            }
            Some('/') => return Some(""),
            _ => from = at + open.len(),
        }
    }
}

/// The defined condition of an `<error>` inside a stanza (the first child of `<error>` that is not
/// `<text>`), e.g. `service-unavailable`.
pub fn error_condition(element: &str) -> Option<&str> {
    let bytes = element.as_bytes();
    let mut from = 1;
    // Find the <error> child (skip the stanza's own start tag).
    let error_at = loop {
        let at = from + element[from..].find("<error")?;
        let next = bytes.get(at + 6).copied();
        if matches!(next, Some(b'>' | b' ' | b'/' | b'\t' | b'\n' | b'\r')) {
            break at;
        }
        from = at + 6;
    };
    let start_end = error_at + tag_end(&bytes[error_at..])?;
    let mut pos = start_end + 1;
    loop {
        let lt = pos + element[pos..].find('<')?;
        let child = &element[lt..];
        if child.starts_with("</") {
            return None;
        }
        let child_name = name(child);
        if child_name != "text" {
            return Some(child_name);
        }
        pos = lt + element_end(child.as_bytes())?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(framer: &mut Framer) -> Vec<Frame> {
        let mut out = Vec::new();
        while let Some(frame) = framer.next_frame().unwrap() {
            out.push(frame);
        }
        out
    }

    #[test]
    fn header_elements_and_close_in_one_read() {
        let mut f = Framer::new();
        f.push(b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' id='abc' a='x>y'>\
            <stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls></stream:features> \
            <iq type='result' id='1'/><message><body>a &lt; b</body></message></stream:stream>");
        let got = frames(&mut f);
        assert_eq!(got.len(), 5);
        let Frame::Header(h) = &got[0] else { panic!() };
        assert_eq!(attr(h, "id"), Some("abc"));
        assert_eq!(attr(h, "a"), Some("x>y"));
        assert!(matches!(&got[1], Frame::Element(e) if name(e) == "stream:features"));
        assert_eq!(got[2], Frame::Element("<iq type='result' id='1'/>".into()));
        assert!(matches!(&got[3], Frame::Element(e) if e.ends_with("</message>")));
        assert_eq!(got[4], Frame::Close);
    }

    #[test]
    fn byte_by_byte() {
        let input = "<stream:stream id=\"q\"><iq type=\"get\" id=\"x1\"><connectionRequest xmlns='urn:broadband-forum-org:cwmp:xmppConnReq-1-0'><username>u</username><password>p</password></connectionRequest></iq><!-- c --><a/>";
        let mut f = Framer::new();
        let mut got = Vec::new();
        for b in input.as_bytes() {
            f.push(&[*b]);
            got.extend(frames(&mut f));
        }
        assert_eq!(got.len(), 3);
        let Frame::Element(iq) = &got[1] else {
            panic!()
        };
        assert_eq!(attr(iq, "id"), Some("x1"));
        assert_eq!(attr(iq, "type"), Some("get"));
        assert_eq!(child_text(iq, "username"), Some("u"));
        assert_eq!(child_text(iq, "password"), Some("p"));
        assert_eq!(got[2], Frame::Element("<a/>".into()));
        assert_eq!(f.pending(), 0);
    }

    #[test]
    fn error_conditions() {
        let e = "<iq type='error' id='1' from='a@b/c'><connectionRequest xmlns='x'><username>u</username></connectionRequest><error type='cancel'><text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>no</text><not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>";
        assert_eq!(error_condition(e), Some("not-authorized"));
        let e = "<iq type='error' id='1'><error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>";
        assert_eq!(error_condition(e), Some("service-unavailable"));
        assert_eq!(error_condition("<iq type='result'/>"), None);
    }

    #[test]
    fn attr_is_exact() {
        let e = "<iq xid='no' id='yes' type=\"get\"/>";
        assert_eq!(attr(e, "id"), Some("yes"));
        assert_eq!(attr(e, "type"), Some("get"));
        assert_eq!(attr(e, "to"), None);
    }

    #[test]
    fn stream_error_and_text_is_an_error() {
        let mut f = Framer::new();
        f.push(b"<stream:stream><stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>");
        let got = frames(&mut f);
        assert!(matches!(&got[1], Frame::Element(e) if name(e) == "stream:error"));
        f.push(b"oops");
        assert!(f.next_frame().is_err());
    }
}
