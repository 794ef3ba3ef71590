//! Fuzz the sans-I/O stream framer (`crbroker::xml::Framer`) and the element writer.
//!
//! Input layout (see `Plan::decode`):
//!
//! * byte 0, flags: bit 0 = content namespace (0 `jabber:client`, 1 `jabber:component:accept`);
//!   bit 1 = prepend a valid stream header (so mutations concentrate on stanzas);
//!   bits 2-3 = limits profile (1 = tiny limits, else the "small" limits below);
//!   bits 4-7 = number `k` of chunk-size bytes that follow.
//! * `k` bytes: chunk sizes (`b + 1`), used cyclically to split the stream (k = 0: one chunk).
//! * the rest: the byte stream.
//!
//! Checks, for every input:
//!
//! 1. no panic, and termination: `next_frame` is called at most `2 * len + 16` times and
//!    `Ok(None)` always leaves the input used up; once it returned `Err` it keeps failing;
//! 2. the frame sequence is well-formed: `StreamOpen` first and once, at most one `StreamClose`
//!    and nothing after it, stanzas within the depth, attribute and node limits;
//! 3. chunking does not matter: the stream fed whole and fed in the chosen chunks gives the same
//!    frames and the same error condition;
//! 4. memory: the peak heap the framer holds (measured with a counting global allocator) stays
//!    under `memory_bound()`;
//! 5. writer round trip: each stanza written with `write_element` and re-parsed after a fresh
//!    stream header is equal to the original, for its own stream namespace and (when no element
//!    in it uses the other content namespace explicitly) for the other one.
//!
//! 6. the header's `content_ns` is the default namespace rxml really resolves (checked by feeding
//!    `<x/>` right after the header).
//!
//! Known, still open bugs are tolerated unless `CRBROKER_FUZZ_STRICT=1` is set, so a run keeps
//! exploring instead of stopping at the first known crash: the memory bound allows the attribute
//! overhead (~15x, strict asks for ~2x), a `restricted-xml`/`not-well-formed` mismatch between
//! chunkings is accepted, and a header `content_ns` needing reference decoding or whitespace
//! normalisation, or coming from a header with a repeated `xmlns`, is accepted (see
//! `memory_bound()`, `same_condition()`, `raw_namespace_bug()`, `duplicate_xmlns_bug()`,
//! fuzz/README.md).

#![no_main]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use crbroker::xml::writer::write_element;
use crbroker::xml::{ns, Element, Frame, FrameError, Framer, FramerLimits};
use libfuzzer_sys::fuzz_target;

#[path = "../common/counting_alloc.rs"]
mod counting_alloc;

// ---------------------------------------------------------------------------------------------

/// Limits while fuzzing: small, so limit paths are reached often.
const SMALL: FramerLimits = FramerLimits {
    max_stanza_bytes: 4096,
    max_depth: 16,
    max_attributes: 32,
    max_header_bytes: 1024,
    max_nodes: 128,
};

/// Tiny limits (below rxml's 256-byte minimum token length, which the framer clamps to).
const TINY: FramerLimits = FramerLimits {
    max_stanza_bytes: 64,
    max_depth: 3,
    max_attributes: 2,
    max_header_bytes: 160,
    max_nodes: 8,
};

/// Limits for re-parsing written stanzas: escaping can make them longer than the original.
const ROOMY: FramerLimits = FramerLimits {
    max_stanza_bytes: 1 << 20,
    max_depth: 64,
    max_attributes: 1024,
    max_header_bytes: 4096,
    max_nodes: 1 << 16,
};

/// Memory bound: `factor * max_stanza_bytes + slack` bytes of heap held by one framer at any
/// moment (parser, element stack, the stanza being handed out). Strict mode asks for the ~2x the
/// framer's documentation suggests. The default allows the known overhead: `max_nodes` bounds
/// elements and text nodes, but each attribute (` a=''`, 5-6 input bytes) still becomes a
/// 72-byte `Attr`, ~15x (regressions/framer-memory-15x-attributes).
fn memory_bound(limits: &FramerLimits) -> usize {
    if strict() {
        // The stanza's bytes (twice: rxml's token scratch and the tree's strings), each node's
        // bookkeeping (an `Element` or `Attr` with its `Vec`s and names, about 160 bytes), and
        // the parser itself.
        2 * limits.max_stanza_bytes + limits.max_nodes * 160 + 16 * 1024
    } else {
        24 * limits.max_stanza_bytes + 64 * 1024
    }
}

fn strict() -> bool {
    static STRICT: OnceLock<bool> = OnceLock::new();
    *STRICT.get_or_init(|| std::env::var_os("CRBROKER_FUZZ_STRICT").is_some_and(|v| v == "1"))
}

fn header_for(content_ns: &str) -> Vec<u8> {
    format!(
        "<?xml version='1.0'?><stream:stream xmlns='{content_ns}' \
         xmlns:stream='http://etherx.jabber.org/streams' to='example.net' version='1.0'>"
    )
    .into_bytes()
}

struct Plan {
    content_ns: &'static str,
    limits: FramerLimits,
    chunk_sizes: Vec<usize>,
    data: Vec<u8>,
}

impl Plan {
    fn decode(input: &[u8]) -> Option<Plan> {
        let (&flags, rest) = input.split_first()?;
        let content_ns = if flags & 1 == 0 {
            ns::CLIENT
        } else {
            ns::COMPONENT
        };
        let limits = if (flags >> 2) & 3 == 1 { TINY } else { SMALL };
        let k = usize::from(flags >> 4).min(rest.len());
        let (sizes, body) = rest.split_at(k);
        let mut data = Vec::with_capacity(body.len() + 160);
        if flags & 2 != 0 {
            data.extend_from_slice(&header_for(content_ns));
        }
        data.extend_from_slice(body);
        Some(Plan {
            content_ns,
            limits,
            chunk_sizes: sizes.iter().map(|&b| usize::from(b) + 1).collect(),
            data,
        })
    }
}

/// Feed `data` to `framer` in chunks (`sizes` cyclically; empty = one chunk), handing each frame
/// to `sink`. Returns the error that ended the stream, if any.
fn feed(
    framer: &mut Framer,
    data: &[u8],
    sizes: &[usize],
    mut sink: impl FnMut(Frame),
) -> Option<FrameError> {
    let budget = 2 * data.len() + 16;
    let mut calls = 0usize;
    let mut pos = 0usize;
    let mut index = 0usize;
    while pos < data.len() {
        let n = match sizes {
            [] => data.len() - pos,
            _ => sizes[index % sizes.len()].min(data.len() - pos),
        };
        index += 1;
        let mut chunk = &data[pos..pos + n];
        loop {
            calls += 1;
            assert!(
                calls <= budget,
                "next_frame does not terminate ({calls} calls for {} bytes)",
                data.len()
            );
            let before = chunk.len();
            let result = framer.next_frame(&mut chunk);
            assert!(chunk.len() <= before, "next_frame grew its input");
            match result {
                Ok(Some(frame)) => sink(frame),
                Ok(None) => {
                    assert!(
                        chunk.is_empty(),
                        "Ok(None) left {} bytes unused",
                        chunk.len()
                    );
                    break;
                }
                Err(e) => {
                    let mut more: &[u8] = b" <a/>";
                    assert!(
                        framer.next_frame(&mut more).is_err(),
                        "a failed framer accepted more input"
                    );
                    return Some(e);
                }
            }
        }
        pos += n;
    }
    None
}

fn depth(el: &Element) -> usize {
    1 + el.child_elements().map(depth).max().unwrap_or(0)
}

fn max_attrs(el: &Element) -> usize {
    el.child_elements()
        .map(max_attrs)
        .fold(el.attrs.len(), usize::max)
}

/// Elements and text nodes, what `max_nodes` counts.
fn nodes(el: &Element) -> usize {
    1 + el
        .children
        .iter()
        .map(|node| match node {
            crbroker::xml::Node::Element(child) => nodes(child),
            crbroker::xml::Node::Text(_) => 1,
        })
        .sum::<usize>()
}

fn uses_ns(el: &Element, uri: &str) -> bool {
    el.ns == uri || el.child_elements().any(|c| uses_ns(c, uri))
}

fn check_sequence(frames: &[Frame], limits: &FramerLimits) {
    for (i, frame) in frames.iter().enumerate() {
        match frame {
            Frame::StreamOpen(_) => assert_eq!(i, 0, "StreamOpen not first: {frames:?}"),
            Frame::Stanza(el) => {
                assert!(i > 0, "stanza before the stream header");
                assert!(!el.name.is_empty());
                assert!(depth(el) <= limits.max_depth, "depth limit not enforced");
                assert!(
                    max_attrs(el) <= limits.max_attributes,
                    "attribute limit not enforced"
                );
                assert!(nodes(el) <= limits.max_nodes, "node limit not enforced");
            }
            Frame::StreamClose => {
                assert!(i > 0, "StreamClose before the stream header");
                assert_eq!(i, frames.len() - 1, "frames after StreamClose: {frames:?}");
            }
        }
    }
}

/// Write `el` for a stream in `stream_ns` and parse it back after a fresh header.
fn round_trip(el: &Element, stream_ns: &'static str) -> Element {
    let mut bytes = header_for(stream_ns);
    write_element(&mut bytes, el, stream_ns);
    let mut framer = Framer::new(ROOMY, stream_ns);
    let mut frames = Vec::new();
    let error = feed(&mut framer, &bytes, &[], |f| frames.push(f));
    let text = String::from_utf8_lossy(&bytes[header_for(stream_ns).len()..]);
    assert!(
        error.is_none(),
        "written stanza does not parse: {error:?}\n{text}\n{el:?}"
    );
    match frames.as_slice() {
        [Frame::StreamOpen(_), Frame::Stanza(back)] => back.clone(),
        other => panic!("written stanza gave {other:?}\n{text}"),
    }
}

fn check_round_trip(el: &Element, content_ns: &'static str) {
    let back = round_trip(el, content_ns);
    assert_eq!(&back, el, "writer round trip changed the stanza");
    let other = if content_ns == ns::CLIENT {
        ns::COMPONENT
    } else {
        ns::CLIENT
    };
    if !uses_ns(el, other) {
        let back = round_trip(el, other);
        assert_eq!(
            &back, el,
            "round trip via the other stream namespace changed the stanza"
        );
    }
}

fn same_condition(a: &FrameError, b: &FrameError) -> bool {
    if a.condition() == b.condition() {
        return true;
    }
    // Known bug (framer `classify`, still open after cc8a33c): the restricted-xml guess looks at
    // the bytes one parse step consumed plus one byte before, so `<![CDA` split across reads, or
    // `<!` inside a CDATA section, flips the condition (regressions/framer-classify-*).
    let pair = [a.condition(), b.condition()];
    !strict() && pair.contains(&"restricted-xml") && pair.contains(&"not-well-formed")
}

/// Known bug (framer `default_namespace`, still open after cc8a33c): the value is the raw
/// attribute text, without character/entity references decoded or whitespace normalised
/// (regressions/framer-header-xmlns-charref).
fn raw_namespace_bug(reported: Option<&str>) -> bool {
    !strict() && reported.is_some_and(|ns| ns.contains(['&', '\t', '\r', '\n']))
}

/// Known bug (rxml accepts a repeated `xmlns='…'` on one element and uses the last one, the
/// framer's `default_namespace` reports the first; regressions/framer-header-duplicate-xmlns).
fn duplicate_xmlns_bug(header_bytes: &[u8]) -> bool {
    let declarations = header_bytes
        .windows(5)
        .enumerate()
        .filter(|(i, w)| {
            *w == b"xmlns"
                && header_bytes[i + 5..]
                    .iter()
                    .find(|b| !b.is_ascii_whitespace())
                    .is_some_and(|&b| b == b'=')
        })
        .count();
    !strict() && declarations > 1
}

/// The header's `content_ns` must be the default namespace rxml resolves: stop at `StreamOpen`,
/// then feed `<x/>` and look at the namespace the element gets.
fn check_header_namespace(plan: &Plan) {
    let mut framer = Framer::new(plan.limits, plan.content_ns);
    let mut input = plan.data.as_slice();
    let header = loop {
        match framer.next_frame(&mut input) {
            Ok(Some(Frame::StreamOpen(header))) => break header,
            Ok(Some(other)) => panic!("{other:?} before the header"),
            Ok(None) | Err(_) => return,
        }
    };
    let mut probe: &[u8] = b"<x/>";
    let el = match framer.next_frame(&mut probe) {
        Ok(Some(Frame::Stanza(el))) => el,
        // E.g. the header left the parser mid-token (`<stream:stream ...>` then `<`): no probe.
        _ => return,
    };
    let header_bytes = &plan.data[..plan.data.len() - input.len()];
    if raw_namespace_bug(header.content_ns.as_deref()) || duplicate_xmlns_bug(header_bytes) {
        return;
    }
    if el.ns.is_empty() {
        // The default namespace is the content namespace, or none.
        assert!(
            matches!(header.content_ns.as_deref(), None | Some(""))
                || header.content_ns.as_deref() == Some(plan.content_ns),
            "header says {:?}, elements are in the content namespace or none",
            header.content_ns
        );
    } else {
        assert_eq!(
            header.content_ns.as_deref(),
            Some(el.ns.as_str()),
            "header content_ns is not the default namespace"
        );
    }
}

static MAX_SEEN: AtomicUsize = AtomicUsize::new(0);

fn check_memory(plan: &Plan) {
    let heap = counting_alloc::Measure::start();
    {
        let mut framer = Framer::new(plan.limits, plan.content_ns);
        let _ = feed(&mut framer, &plan.data, &plan.chunk_sizes, drop);
    }
    let peak = heap.peak();
    let bound = memory_bound(&plan.limits);
    assert!(
        peak <= bound,
        "framer held {peak} bytes (bound {bound}) for {} input bytes",
        plan.data.len()
    );
    if plan.limits.max_stanza_bytes == SMALL.max_stanza_bytes
        && peak > MAX_SEEN.fetch_max(peak, Ordering::Relaxed)
        && std::env::var_os("CRBROKER_FUZZ_REPORT_MEMORY").is_some()
    {
        eprintln!(
            "framer memory high-water: {peak} bytes for max_stanza_bytes {} ({} input bytes)",
            plan.limits.max_stanza_bytes,
            plan.data.len()
        );
    }
}

fuzz_target!(|input: &[u8]| {
    let Some(plan) = Plan::decode(input) else {
        return;
    };

    let mut whole_frames = Vec::new();
    let whole_error = feed(
        &mut Framer::new(plan.limits, plan.content_ns),
        &plan.data,
        &[],
        |f| whole_frames.push(f),
    );
    check_sequence(&whole_frames, &plan.limits);

    let mut split_frames = Vec::new();
    let split_error = feed(
        &mut Framer::new(plan.limits, plan.content_ns),
        &plan.data,
        &plan.chunk_sizes,
        |f| split_frames.push(f),
    );
    assert_eq!(whole_frames, split_frames, "chunking changed the frames");
    match (&whole_error, &split_error) {
        (None, None) => {}
        (Some(a), Some(b)) => assert!(
            same_condition(a, b),
            "chunking changed the error: whole {a:?}, chunked {b:?}"
        ),
        _ => panic!("chunking changed whether the stream failed: whole {whole_error:?}, chunked {split_error:?}"),
    }

    check_memory(&plan);
    check_header_namespace(&plan);

    for frame in &whole_frames {
        if let Frame::Stanza(el) = frame {
            check_round_trip(el, plan.content_ns);
        }
    }
});
