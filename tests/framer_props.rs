//! Property tests for the stream framer (`crbroker::xml::Framer`) and the element writer.
//!
//! * split points anywhere in a valid stream give the same frames as feeding it whole, and those
//!   frames are the generated stanzas;
//! * random bytes (alone or after a valid header) never panic, always terminate, and give a
//!   well-formed frame sequence or an error;
//! * writer → framer round trip gives back the generated element;
//! * the stanza-size, depth, attribute and node limits are exact.
//!
//! Case counts are kept moderate (256, override with `PROPTEST_CASES`) so
//! `cargo test --test framer_props` takes about a second in debug.
//! The tests at the end pin down bugs fuzzing found (fixed).

use crbroker::xml::writer::write_element;
use crbroker::xml::{ns, Element, Frame, FrameError, Framer, FramerLimits, Node, StreamHeader};
use proptest::prelude::*;
use proptest::sample::Index;

const LIMITS: FramerLimits = FramerLimits {
    max_stanza_bytes: 64 * 1024,
    max_depth: 16,
    max_attributes: 32,
    max_header_bytes: 2048,
    max_nodes: 4096,
};

fn header(content_ns: &str) -> Vec<u8> {
    format!(
        "<?xml version='1.0'?><stream:stream xmlns='{content_ns}' \
         xmlns:stream='http://etherx.jabber.org/streams' to='example.net' version='1.0'>"
    )
    .into_bytes()
}

fn expected_header(content_ns: &str) -> Frame {
    Frame::StreamOpen(StreamHeader {
        to: Some("example.net".into()),
        from: None,
        version: Some("1.0".into()),
        content_ns: Some(content_ns.into()),
    })
}

/// Frames and the final error (if any) of feeding `chunks` in order to `framer`.
/// Also checks the calling contract: termination, `Ok(None)` uses the input up, failures stick.
fn run<'a>(
    framer: &mut Framer,
    chunks: impl IntoIterator<Item = &'a [u8]>,
) -> (Vec<Frame>, Option<FrameError>) {
    let mut frames = Vec::new();
    let mut calls = 0usize;
    let mut total = 0usize;
    for chunk in chunks {
        total += chunk.len();
        let mut input = chunk;
        loop {
            calls += 1;
            assert!(calls <= 2 * total + 16, "next_frame does not terminate");
            match framer.next_frame(&mut input) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => {
                    assert!(input.is_empty(), "Ok(None) left input unused");
                    break;
                }
                Err(e) => {
                    let mut more: &[u8] = b"<presence/>";
                    assert!(
                        framer.next_frame(&mut more).is_err(),
                        "failure did not stick"
                    );
                    return (frames, Some(e));
                }
            }
        }
    }
    (frames, None)
}

fn run_whole(
    content_ns: &'static str,
    limits: FramerLimits,
    data: &[u8],
) -> (Vec<Frame>, Option<FrameError>) {
    run(&mut Framer::new(limits, content_ns), [data])
}

/// `data` cut at `cuts` (indices into `0..=len`, any order, duplicates allowed).
fn run_split(
    content_ns: &'static str,
    limits: FramerLimits,
    data: &[u8],
    cuts: &[Index],
) -> (Vec<Frame>, Option<FrameError>) {
    let mut points: Vec<usize> = cuts.iter().map(|c| c.index(data.len() + 1)).collect();
    points.push(0);
    points.push(data.len());
    points.sort_unstable();
    points.dedup();
    let chunks: Vec<&[u8]> = points.windows(2).map(|w| &data[w[0]..w[1]]).collect();
    run(&mut Framer::new(limits, content_ns), chunks)
}

/// Structural rules every frame sequence follows.
fn check_sequence(frames: &[Frame]) {
    for (i, frame) in frames.iter().enumerate() {
        match frame {
            Frame::StreamOpen(_) => assert_eq!(i, 0, "StreamOpen not first: {frames:?}"),
            Frame::Stanza(_) => assert!(i > 0, "stanza before the header"),
            Frame::StreamClose => {
                assert!(i > 0, "StreamClose before the header");
                assert_eq!(i + 1, frames.len(), "frames after StreamClose");
            }
        }
    }
}

/// Attribute order carries no meaning in XML and the framer hands attributes out in rxml's
/// (sorted) map order: compare elements with their attributes sorted.
fn sort_attrs(mut el: Element) -> Element {
    el.attrs
        .sort_by(|a, b| (a.ns.as_deref(), &a.name).cmp(&(b.ns.as_deref(), &b.name)));
    el.children = el
        .children
        .into_iter()
        .map(|node| match node {
            Node::Element(e) => Node::Element(sort_attrs(e)),
            text => text,
        })
        .collect();
    el
}

fn canonical(frames: &[Frame]) -> Vec<Frame> {
    frames
        .iter()
        .map(|frame| match frame {
            Frame::Stanza(el) => Frame::Stanza(sort_attrs(el.clone())),
            other => other.clone(),
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Generators

/// Characters for text and attribute values: plain, XML-special, whitespace, and multi-byte.
fn arb_char() -> impl Strategy<Value = char> {
    prop_oneof![
        6 => prop::char::range('a', 'z'),
        3 => prop::sample::select(vec![' ', '<', '>', '&', '\'', '"', '\t', '\n', '\r', ';', '#', ']', '=', '/']),
        1 => prop::char::range('\u{a0}', '\u{7ff}'),
        1 => prop::char::range('\u{4e00}', '\u{4e50}'),
        1 => prop::char::range('\u{1f600}', '\u{1f64f}'),
    ]
}

fn arb_string(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(arb_char(), 0..max).prop_map(|v| v.into_iter().collect())
}

/// NCNames that are not reserved (`xml…`).
fn arb_name() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec!["iq", "message", "presence", "body", "query", "item", "error", "connectionRequest", "username", "password"])
            .prop_map(String::from),
        2 => "[a-wyz][a-z0-9._-]{0,6}",
    ]
}

/// Element namespaces: the stream's content namespace (`""`) most often, never the other
/// content namespace spelled out (that maps to `""` on the other stream type).
fn arb_ns() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => Just(String::new()),
        1 => Just("urn:x".to_string()),
        1 => Just(ns::CONN_REQ.to_string()),
        1 => Just(ns::STANZAS.to_string()),
        1 => Just("http://example.com/a?b=c&d='e'".to_string()),
    ]
}

fn arb_attrs() -> impl Strategy<Value = Vec<crbroker::xml::element::Attr>> {
    use crbroker::xml::element::Attr;
    (
        prop::collection::vec((arb_name(), arb_string(10)), 0..5),
        prop::option::of(arb_string(6)),
        prop::option::of((arb_name(), arb_string(6))),
    )
        .prop_map(|(plain, lang, namespaced)| {
            let mut attrs: Vec<Attr> = Vec::new();
            for (name, value) in plain {
                if !attrs.iter().any(|a| a.name == name) {
                    attrs.push(Attr {
                        ns: None,
                        name,
                        value,
                    });
                }
            }
            if let Some(value) = lang {
                attrs.push(Attr {
                    ns: Some(ns::XML.to_string()),
                    name: "lang".into(),
                    value,
                });
            }
            if let Some((name, value)) = namespaced {
                attrs.push(Attr {
                    ns: Some("urn:attr".into()),
                    name,
                    value,
                });
            }
            attrs
        })
}

/// Merge adjacent text nodes and drop empty ones, as the framer does.
fn normalise(mut el: Element) -> Element {
    let mut children: Vec<Node> = Vec::new();
    for node in el.children {
        match node {
            Node::Text(t) if t.is_empty() => {}
            Node::Text(t) => match children.last_mut() {
                Some(Node::Text(prev)) => prev.push_str(&t),
                _ => children.push(Node::Text(t)),
            },
            Node::Element(e) => children.push(Node::Element(e)),
        }
    }
    el.children = children;
    el
}

fn arb_element() -> impl Strategy<Value = Element> {
    let leaf = (arb_ns(), arb_name(), arb_attrs()).prop_map(|(ns, name, attrs)| Element {
        ns,
        name,
        attrs,
        children: Vec::new(),
    });
    leaf.prop_recursive(4, 24, 5, |inner| {
        (
            arb_ns(),
            arb_name(),
            arb_attrs(),
            prop::collection::vec(
                prop_oneof![
                    inner.prop_map(Node::Element),
                    arb_string(12).prop_map(Node::Text),
                ],
                0..5,
            ),
        )
            .prop_map(|(ns, name, attrs, children)| {
                normalise(Element {
                    ns,
                    name,
                    attrs,
                    children,
                })
            })
    })
}

// ---------------------------------------------------------------------------------------------
// An independent serialiser (not the crate's writer) with a few style choices.

#[derive(Debug, Clone, Copy)]
struct Style {
    double_quotes: bool,
    /// `<a></a>` instead of `<a/>`.
    expand_empty: bool,
    /// Numeric character references for everything outside ASCII alphanumerics.
    char_refs: bool,
    /// Whitespace around `=` and before `/>`/`>`.
    spacey: bool,
}

fn arb_style() -> impl Strategy<Value = Style> {
    (
        any::<bool>(),
        any::<bool>(),
        prop::bool::weighted(0.2),
        any::<bool>(),
    )
        .prop_map(|(double_quotes, expand_empty, char_refs, spacey)| Style {
            double_quotes,
            expand_empty,
            char_refs,
            spacey,
        })
}

fn escape(out: &mut String, s: &str, style: Style, in_attr: bool) {
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '\'' if in_attr && !style.double_quotes => out.push_str("&apos;"),
            '"' if in_attr && style.double_quotes => out.push_str("&quot;"),
            '\r' => out.push_str("&#13;"),
            '\t' | '\n' if in_attr => out.push_str(&format!("&#{};", u32::from(c))),
            c if style.char_refs && !c.is_ascii_alphanumeric() => {
                out.push_str(&format!("&#x{:X};", u32::from(c)))
            }
            c => out.push(c),
        }
    }
}

fn serialise(out: &mut String, el: &Element, parent_ns: &str, content_ns: &str, style: Style) {
    let q = if style.double_quotes { '"' } else { '\'' };
    let eq = if style.spacey { " = " } else { "=" };
    out.push('<');
    out.push_str(&el.name);
    if el.ns != parent_ns {
        let uri = if el.ns.is_empty() { content_ns } else { &el.ns };
        out.push_str(&format!(" xmlns{eq}{q}"));
        escape(out, uri, style, true);
        out.push(q);
    }
    for (i, attr) in el.attrs.iter().enumerate() {
        out.push(' ');
        match attr.ns.as_deref() {
            None => {}
            Some(ns::XML) => out.push_str("xml:"),
            Some(uri) => {
                out.push_str(&format!("xmlns:p{i}{eq}{q}"));
                escape(out, uri, style, true);
                out.push_str(&format!("{q} p{i}:"));
            }
        }
        out.push_str(&attr.name);
        out.push_str(eq);
        out.push(q);
        escape(out, &attr.value, style, true);
        out.push(q);
    }
    if style.spacey {
        out.push('\n');
    }
    if el.children.is_empty() && !style.expand_empty {
        out.push_str("/>");
        return;
    }
    out.push('>');
    for child in &el.children {
        match child {
            Node::Element(e) => serialise(out, e, &el.ns, content_ns, style),
            Node::Text(t) => escape(out, t, style, false),
        }
    }
    out.push_str("</");
    out.push_str(&el.name);
    if style.spacey {
        out.push(' ');
    }
    out.push('>');
}

fn stream_bytes(
    content_ns: &str,
    stanzas: &[Element],
    keepalives: &[String],
    style: Style,
) -> Vec<u8> {
    let mut text = String::from_utf8(header(content_ns)).unwrap();
    for (i, el) in stanzas.iter().enumerate() {
        text.push_str(keepalives.get(i).map_or("", String::as_str));
        serialise(&mut text, el, "", content_ns, style);
    }
    text.push_str(keepalives.last().map_or("", String::as_str));
    text.push_str("</stream:stream>");
    text.into_bytes()
}

fn content_ns(component: bool) -> &'static str {
    if component {
        ns::COMPONENT
    } else {
        ns::CLIENT
    }
}

fn depth(el: &Element) -> usize {
    1 + el.child_elements().map(depth).max().unwrap_or(0)
}

/// Elements, attributes and text nodes (what `max_nodes` counts).
fn nodes(el: &Element) -> usize {
    1 + el.attrs.len()
        + el.children
            .iter()
            .map(|node| match node {
                Node::Element(child) => nodes(child),
                Node::Text(_) => 1,
            })
            .sum::<usize>()
}

fn max_attrs(el: &Element) -> usize {
    el.child_elements()
        .map(max_attrs)
        .fold(el.attrs.len(), usize::max)
}

// ---------------------------------------------------------------------------------------------

proptest! {
    // No `*.proptest-regressions` file next to this one: failures print their minimal input.
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Header + stanzas + footer cut anywhere: same frames as whole, and they are the stanzas.
    #[test]
    fn split_points_do_not_change_frames(
        stanzas in prop::collection::vec(arb_element(), 0..5),
        keepalives in prop::collection::vec("[ \t\r\n]{0,3}", 6),
        style in arb_style(),
        component in any::<bool>(),
        cuts in prop::collection::vec(any::<Index>(), 0..12),
    ) {
        let ns = content_ns(component);
        let data = stream_bytes(ns, &stanzas, &keepalives, style);
        let mut expected = vec![expected_header(ns)];
        expected.extend(stanzas.iter().cloned().map(Frame::Stanza));
        expected.push(Frame::StreamClose);

        let whole = run_whole(ns, LIMITS, &data);
        prop_assert_eq!(&whole.1, &None, "{}", String::from_utf8_lossy(&data));
        prop_assert_eq!(canonical(&whole.0), canonical(&expected), "{}", String::from_utf8_lossy(&data));
        let split = run_split(ns, LIMITS, &data, &cuts);
        prop_assert_eq!(&split, &whole);
    }

    /// Byte-at-a-time feeding of a generated stream (the most extreme chunking).
    #[test]
    fn byte_at_a_time_gives_the_same_frames(
        stanzas in prop::collection::vec(arb_element(), 1..3),
        style in arb_style(),
        component in any::<bool>(),
    ) {
        let ns = content_ns(component);
        let data = stream_bytes(ns, &stanzas, &[], style);
        let whole = run_whole(ns, LIMITS, &data);
        let bytewise = run(&mut Framer::new(LIMITS, ns), data.chunks(1));
        prop_assert_eq!(bytewise, whole);
    }

    /// Random bytes: no panic, termination, a well-formed frame sequence; chunking changes
    /// neither the frames nor whether the stream fails.
    #[test]
    fn random_bytes_terminate(
        data in prop::collection::vec(any::<u8>(), 0..400),
        with_header in any::<bool>(),
        component in any::<bool>(),
        cuts in prop::collection::vec(any::<Index>(), 0..8),
    ) {
        let ns = content_ns(component);
        let mut bytes = if with_header { header(ns) } else { Vec::new() };
        bytes.extend_from_slice(&data);
        let small = FramerLimits { max_stanza_bytes: 256, max_depth: 4, max_attributes: 4, max_header_bytes: 512, max_nodes: 4096 };
        let whole = run_whole(ns, small, &bytes);
        check_sequence(&whole.0);
        if with_header {
            prop_assert_eq!(whole.0.first(), Some(&expected_header(ns)));
        }
        let split = run_split(ns, small, &bytes, &cuts);
        prop_assert_eq!(&split.0, &whole.0);
        prop_assert_eq!(split.1.is_some(), whole.1.is_some());
    }

    /// Random markup-ish bytes (mostly XML punctuation and names) after a valid header.
    #[test]
    fn random_markup_terminates(
        data in prop::collection::vec(prop::sample::select(b"<>/=\"'&;#!?[]- \nabxmlns:stream\xc3\xa9".to_vec()), 0..300),
        component in any::<bool>(),
        cuts in prop::collection::vec(any::<Index>(), 0..8),
    ) {
        let ns = content_ns(component);
        let mut bytes = header(ns);
        bytes.extend_from_slice(&data);
        let small = FramerLimits { max_stanza_bytes: 128, max_depth: 4, max_attributes: 3, max_header_bytes: 512, max_nodes: 4096 };
        let whole = run_whole(ns, small, &bytes);
        check_sequence(&whole.0);
        let split = run_split(ns, small, &bytes, &cuts);
        prop_assert_eq!(&split.0, &whole.0);
        prop_assert_eq!(split.1.is_some(), whole.1.is_some());
    }

    /// `write_element` then the framer gives back the element, on both stream types.
    #[test]
    fn writer_round_trip(el in arb_element(), component in any::<bool>()) {
        let ns = content_ns(component);
        let mut data = header(ns);
        write_element(&mut data, &el, ns);
        let (frames, error) = run_whole(ns, LIMITS, &data);
        prop_assert_eq!(error, None, "{}", String::from_utf8_lossy(&data));
        prop_assert_eq!(canonical(&frames), canonical(&[expected_header(ns), Frame::Stanza(el)]));
    }

    /// A stanza of exactly `max_stanza_bytes` passes, one byte more is a policy violation; the
    /// depth and attribute limits are exact too. Whole and split feeding agree.
    #[test]
    fn limits_are_exact(
        el in arb_element(),
        style in arb_style(),
        cuts in prop::collection::vec(any::<Index>(), 0..6),
    ) {
        let ns = ns::CLIENT;
        let mut stanza = String::new();
        serialise(&mut stanza, &el, "", ns, style);
        let size = stanza.len();
        let mut data = header(ns);
        data.extend_from_slice(stanza.as_bytes());
        let exact = FramerLimits {
            max_stanza_bytes: size,
            max_depth: depth(&el),
            max_attributes: max_attrs(&el),
            max_header_bytes: 2048,
            max_nodes: nodes(&el),
        };
        let ok = (canonical(&[expected_header(ns), Frame::Stanza(el.clone())]), None);
        let (frames, error) = run_whole(ns, exact, &data);
        prop_assert_eq!(&(canonical(&frames), error), &ok);
        let (frames, error) = run_split(ns, exact, &data, &cuts);
        prop_assert_eq!(&(canonical(&frames), error), &ok);

        let too_big = FramerLimits { max_stanza_bytes: size - 1, ..exact };
        let refused = (vec![expected_header(ns)], Some(FrameError::PolicyViolation("stanza too large")));
        prop_assert_eq!(&run_whole(ns, too_big, &data), &refused);
        prop_assert_eq!(&run_split(ns, too_big, &data, &cuts), &refused);

        let too_deep = FramerLimits { max_depth: depth(&el) - 1, ..exact };
        let (frames, error) = run_split(ns, too_deep, &data, &cuts);
        prop_assert_eq!(frames.len(), 1);
        prop_assert_eq!(error, Some(FrameError::PolicyViolation("elements nested too deeply")));

        if max_attrs(&el) > 0 {
            let too_many = FramerLimits { max_attributes: max_attrs(&el) - 1, ..exact };
            let (frames, error) = run_split(ns, too_many, &data, &cuts);
            prop_assert_eq!(frames.len(), 1);
            prop_assert_eq!(error, Some(FrameError::PolicyViolation("too many attributes")));
        }

        let too_many_nodes = FramerLimits { max_nodes: nodes(&el) - 1, ..exact };
        let (frames, error) = run_split(ns, too_many_nodes, &data, &cuts);
        prop_assert_eq!(frames.len(), 1);
        prop_assert_eq!(error, Some(FrameError::PolicyViolation("too many elements")));
    }
}

// ---------------------------------------------------------------------------------------------
// Bugs found by fuzz/ (reproducers under fuzz/regressions/), all fixed.

#[test]
fn writer_keeps_tab_and_newline_in_attribute_values() {
    let el = Element::stanza("message")
        .with_attr("a", "\t")
        .with_attr("b", "x\ny")
        .with_child(Element::new("\nurn:x", "x"));
    let mut data = header(ns::CLIENT);
    write_element(&mut data, &el, ns::CLIENT);
    let (frames, error) = run_whole(ns::CLIENT, LIMITS, &data);
    assert_eq!(error, None);
    assert_eq!(
        canonical(&frames),
        canonical(&[expected_header(ns::CLIENT), Frame::Stanza(el)])
    );
}

/// fuzz/regressions/framer-writer-xml-namespace-element: `<xml:l/>` is an element in the XML
/// namespace; the writer declared that as a default namespace (`<l xmlns='…/XML/1998/namespace'/>`),
/// which parsers refuse, so a CPE could make the broker send the ACS a stream it cannot parse.
#[test]
fn writer_keeps_the_xml_prefix_for_elements_in_the_xml_namespace() {
    let el = Element::stanza("message").with_child(
        Element::new(ns::XML, "l")
            .with_child(Element::stanza("body").with_text("x"))
            .with_child(Element::new("urn:x", "y")),
    );
    for stream_ns in [ns::CLIENT, ns::COMPONENT] {
        let mut data = header(stream_ns);
        write_element(&mut data, &el, stream_ns);
        let (frames, error) = run_whole(stream_ns, LIMITS, &data);
        assert_eq!(error, None, "{}", String::from_utf8_lossy(&data));
        assert_eq!(
            canonical(&frames),
            canonical(&[expected_header(stream_ns), Frame::Stanza(el.clone())])
        );
    }
}

#[test]
fn error_condition_does_not_depend_on_chunking() {
    let mut data = header(ns::CLIENT);
    data.extend_from_slice(b"<message></x>");
    let cut = data.len();
    data.extend_from_slice(b"<!---->");
    let whole = run_whole(ns::CLIENT, LIMITS, &data);
    let split = run(
        &mut Framer::new(LIMITS, ns::CLIENT),
        [&data[..cut], &data[cut..]],
    );
    assert_eq!(
        whole.1.as_ref().map(FrameError::condition),
        split.1.as_ref().map(FrameError::condition),
        "whole {whole:?} / split {split:?}"
    );
    assert_eq!(whole.1.map(|e| e.condition()), Some("not-well-formed"));
}

#[test]
fn header_content_ns_is_the_declared_default_namespace() {
    let data = b"<stream:stream to=\"x xmlns='jabber:client'\" xmlns='jabber:server' \
        xmlns:stream='http://etherx.jabber.org/streams' version='1.0'><message/>";
    let (frames, error) = run_whole(ns::CLIENT, LIMITS, data);
    assert_eq!(error, None);
    // The stanza really is in jabber:server (not the content namespace) ...
    assert_eq!(
        frames[1],
        Frame::Stanza(Element::new("jabber:server", "message"))
    );
    // ... so the header must not claim jabber:client (session::c2s::header_problem trusts it).
    let Frame::StreamOpen(header) = &frames[0] else {
        panic!("{frames:?}")
    };
    assert_eq!(header.content_ns.as_deref(), Some("jabber:server"));
}

/// Feed `data` whole and cut at `cut`; both must fail with `condition`.
fn assert_condition_independent_of_chunking(data: &[u8], cut: usize, condition: &str) {
    let whole = run_whole(ns::CLIENT, LIMITS, data);
    let split = run(
        &mut Framer::new(LIMITS, ns::CLIENT),
        [&data[..cut], &data[cut..]],
    );
    assert_eq!(
        whole.1.as_ref().map(FrameError::condition),
        split.1.as_ref().map(FrameError::condition),
        "whole {whole:?} / split {split:?}"
    );
    assert_eq!(whole.1.map(|e| e.condition()), Some(condition));
}

#[test]
fn malformed_cdata_start_condition_does_not_depend_on_chunking() {
    // fuzz/regressions/framer-classify-split-cdata-start
    let mut data = header(ns::CLIENT);
    data.extend_from_slice(b"<message><![");
    let cut = data.len();
    data.extend_from_slice(b"CDAx");
    // Either answer is defensible for a broken `<![CDATA[`; it must just not depend on the cut.
    let whole = run_whole(ns::CLIENT, LIMITS, &data).1.unwrap();
    assert_condition_independent_of_chunking(&data, cut, whole.condition());
}

#[test]
fn bang_inside_cdata_is_not_restricted_xml() {
    // fuzz/regressions/framer-classify-bang-inside-cdata: the error is the NUL, not the `<!`.
    let mut data = header(ns::CLIENT);
    data.extend_from_slice(b"<message><![CDATA[<!x");
    let cut = data.len();
    data.extend_from_slice(b"\0]]></message>");
    assert_condition_independent_of_chunking(&data, cut, "not-well-formed");
}

#[test]
fn header_content_ns_decodes_character_references() {
    // fuzz/regressions/framer-header-xmlns-charref: a valid jabber:client header is refused
    // with invalid-namespace by session::c2s::header_problem.
    let data = b"<stream:stream xmlns='jabber&#58;client' \
        xmlns:stream='http://etherx.jabber.org/streams' to='example.net' version='1.0'><message/>";
    let (frames, error) = run_whole(ns::CLIENT, LIMITS, data);
    assert_eq!(error, None);
    assert_eq!(frames[1], Frame::Stanza(Element::stanza("message")));
    assert_eq!(frames[0], expected_header(ns::CLIENT));
}

#[test]
fn header_with_repeated_xmlns_cannot_spoof_the_content_namespace() {
    // fuzz/regressions/framer-header-duplicate-xmlns
    let data = b"<stream:stream xmlns='jabber:client' \
        xmlns:stream='http://etherx.jabber.org/streams' xmlns='jabber:server' \
        to='example.net' version='1.0'><message/>";
    let (frames, error) = run_whole(ns::CLIENT, LIMITS, data);
    // Refusing the header (not well-formed: duplicate attribute) is the right answer; reporting
    // the namespace the stanzas really get would do.
    if error.is_none() {
        let Frame::StreamOpen(header) = &frames[0] else {
            panic!("{frames:?}")
        };
        assert_eq!(
            frames[1],
            Frame::Stanza(Element::new("jabber:server", "message"))
        );
        assert_eq!(header.content_ns.as_deref(), Some("jabber:server"));
    }
}
