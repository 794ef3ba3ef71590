//! The bounded queue toward one connection. Other tasks push; the connection's own task drains.
//!
//! Two kinds of stanza share one FIFO (order is kept) but not one bound:
//! - Answers to pending requests ([`Outbox::push_answer`], only toward ACS connections) have
//!   their own room, `limits.acs_outbox_answer_bytes`. The pending table already bounds how many
//!   answers one ACS connection can be owed (`requests.max_pending_per_acs`); the byte room caps
//!   their memory. An answer is never turned away while the connection lives: an answer that
//!   does not fit means the peer has stopped reading, so the outbox gives up on the connection
//!   like the stuck-session rule does, at once: it discards what it holds, ends the stream with
//!   `<resource-constraint/>`, and reports the answers it lost ([`AnswerError::Overflow`]), which
//!   the caller counts as `answers_acs_gone`.
//! - Everything else ([`Outbox::push`]: requests toward a CPE, unsolicited stanzas toward an ACS)
//!   is bounded by `limits.outbox_stanzas` and `limits.outbox_bytes`. When full, `push` fails with
//!   [`PushError::Full`] and the caller answers for the stanza itself (a request gets
//!   `<resource-constraint/>`; other stanzas are dropped and counted); nothing waits. So however
//!   much unsolicited traffic arrives, it never takes the answers' room.
//!
//! Sizes are estimates of what an element holds in memory ([`estimated_size`]), one walk over a
//! tree the framer already bounded. A connection whose peer stops reading is also closed by its
//! own task when a write does not finish within the stuck-session grace. The lock is a plain
//! mutex held only for a push or a pop, never across an `.await`.

use crate::xml::{Element, Node};
use std::collections::VecDeque;
use std::mem::size_of;
use std::sync::Mutex;
use tokio::sync::Notify;

#[derive(Debug)]
pub enum Outgoing {
    Stanza(Element),
    /// Send this stream error condition and close the stream.
    Close(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    #[error("outbox full")]
    Full,
    #[error("connection closed")]
    Closed,
}

/// Why an answer was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    #[error("connection closed")]
    Closed,
    /// The answer did not fit in the answer room: the outbox discarded `lost` queued answers (the
    /// refused one not included) and is closing the connection.
    #[error("answer room exceeded: connection closed, {lost} queued answers lost")]
    Overflow { lost: usize },
}

/// Bounds of one outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxLimits {
    /// Most stanzas other than answers queued at once.
    pub stanzas: usize,
    /// Most estimated bytes of stanzas other than answers (one stanza always fits when none is
    /// queued).
    pub bytes: usize,
    /// Most estimated bytes of answers to pending requests (likewise one always fits).
    pub answer_bytes: usize,
}

pub struct Outbox {
    state: Mutex<State>,
    notify: Notify,
    limits: OutboxLimits,
}

struct State {
    queue: VecDeque<Queued>,
    closed: bool,
    other: Usage,
    answers: Usage,
}

#[derive(Default, Clone, Copy)]
struct Usage {
    stanzas: usize,
    bytes: usize,
}

struct Queued {
    item: Outgoing,
    bytes: usize,
    answer: bool,
}

impl Outbox {
    pub fn new(limits: OutboxLimits) -> Outbox {
        Outbox {
            state: Mutex::new(State {
                // Starts without heap allocation: most CPEs receive nothing for days.
                queue: VecDeque::new(),
                closed: false,
                other: Usage::default(),
                answers: Usage::default(),
            }),
            notify: Notify::new(),
            limits,
        }
    }

    /// Queue a stanza that is not an answer to a pending request. A stanza that is not taken
    /// comes back with the reason, so the caller can answer it.
    pub fn push(&self, element: Element) -> Result<(), (PushError, Element)> {
        let bytes = estimated_size(&element);
        {
            let mut state = self.lock();
            if state.closed {
                return Err((PushError::Closed, element));
            }
            let used = state.other;
            // An empty room takes any one stanza, so a room smaller than the largest stanza
            // the framer allows never refuses it outright.
            let over_bytes = used.stanzas > 0 && used.bytes + bytes > self.limits.bytes;
            if used.stanzas >= self.limits.stanzas || over_bytes {
                return Err((PushError::Full, element));
            }
            state.enqueue(element, bytes, false);
        }
        self.notify.notify_one();
        Ok(())
    }

    /// Queue the answer to a pending request, in the room kept for answers.
    pub fn push_answer(&self, element: Element) -> Result<(), AnswerError> {
        let bytes = estimated_size(&element);
        let result = {
            let mut state = self.lock();
            if state.closed {
                return Err(AnswerError::Closed);
            }
            let used = state.answers;
            if used.stanzas > 0 && used.bytes + bytes > self.limits.answer_bytes {
                let lost = state.answers.stanzas;
                state.discard();
                state.closed = true;
                state.push_close("resource-constraint");
                Err(AnswerError::Overflow { lost })
            } else {
                state.enqueue(element, bytes, true);
                Ok(())
            }
        };
        self.notify.notify_one();
        result
    }

    /// Ask the connection to end its stream with `condition`; later pushes fail with `Closed`.
    /// Returns false when the outbox was already closed.
    pub fn close(&self, condition: &'static str) -> bool {
        {
            let mut state = self.lock();
            if state.closed {
                return false;
            }
            state.closed = true;
            state.push_close(condition);
        }
        self.notify.notify_one();
        true
    }

    /// Mark closed without a message (the connection's task is ending by itself) and free what
    /// is queued. Returns how many answers were still queued: they are lost.
    pub fn seal(&self) -> usize {
        let mut state = self.lock();
        state.closed = true;
        let lost = state.answers.stanzas;
        state.discard();
        lost
    }

    pub fn pop(&self) -> Option<Outgoing> {
        let mut state = self.lock();
        let queued = state.queue.pop_front()?;
        let usage = if queued.answer {
            &mut state.answers
        } else {
            &mut state.other
        };
        if matches!(queued.item, Outgoing::Stanza(_)) {
            usage.stanzas -= 1;
            usage.bytes -= queued.bytes;
        }
        if state.queue.is_empty() && state.queue.capacity() > 4 {
            // Give memory back once a burst is over.
            state.queue = VecDeque::new();
        }
        Some(queued.item)
    }

    pub fn len(&self) -> usize {
        self.lock().queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the connection is closing (asked to close, or its task ended).
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Resolves when something was pushed since the last call.
    pub async fn notified(&self) {
        self.notify.notified().await
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the queue inconsistent: recover.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl State {
    fn enqueue(&mut self, element: Element, bytes: usize, answer: bool) {
        let usage = if answer {
            &mut self.answers
        } else {
            &mut self.other
        };
        usage.stanzas += 1;
        usage.bytes += bytes;
        self.queue.push_back(Queued {
            item: Outgoing::Stanza(element),
            bytes,
            answer,
        });
    }

    fn discard(&mut self) {
        self.queue = VecDeque::new();
        self.other = Usage::default();
        self.answers = Usage::default();
    }

    fn push_close(&mut self, condition: &'static str) {
        self.queue.push_back(Queued {
            item: Outgoing::Close(condition),
            bytes: 0,
            answer: false,
        });
    }
}

/// About how many bytes `element` holds: its strings plus the structs that hold them. One walk
/// over the tree, no allocation; a typical answer (`<iq type='result' .../>`) comes to ~450.
pub fn estimated_size(element: &Element) -> usize {
    let mut size = size_of::<Element>() + element.ns.len() + element.name.len();
    for attr in &element.attrs {
        size += size_of::<crate::xml::element::Attr>()
            + attr.ns.as_ref().map_or(0, String::len)
            + attr.name.len()
            + attr.value.len();
    }
    for child in &element.children {
        size += match child {
            Node::Element(e) => estimated_size(e),
            Node::Text(text) => size_of::<Node>() + text.len(),
        };
    }
    size
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOMY: OutboxLimits = OutboxLimits {
        stanzas: 2,
        bytes: 1 << 20,
        answer_bytes: 1 << 20,
    };

    fn stanza_of(bytes: usize) -> Element {
        let mut e = Element::stanza("message");
        e.children.push(Node::Text("x".repeat(bytes)));
        e
    }

    /// Why `push` refused, without the stanza it handed back.
    fn push(outbox: &Outbox, element: Element) -> Result<(), PushError> {
        outbox.push(element).map_err(|(error, _)| error)
    }

    #[test]
    fn full_and_closed() {
        let outbox = Outbox::new(ROOMY);
        assert!(push(&outbox, Element::stanza("a")).is_ok());
        assert!(push(&outbox, Element::stanza("b")).is_ok());
        assert_eq!(push(&outbox, Element::stanza("c")), Err(PushError::Full));
        assert!(outbox.close("conflict"));
        assert!(!outbox.close("conflict"));
        assert_eq!(push(&outbox, Element::stanza("d")), Err(PushError::Closed));
        assert_eq!(
            outbox.push_answer(Element::stanza("e")),
            Err(AnswerError::Closed)
        );
        assert!(matches!(outbox.pop(), Some(Outgoing::Stanza(e)) if e.name == "a"));
        assert!(matches!(outbox.pop(), Some(Outgoing::Stanza(e)) if e.name == "b"));
        assert!(matches!(outbox.pop(), Some(Outgoing::Close("conflict"))));
        assert!(outbox.pop().is_none());
    }

    #[test]
    fn other_stanzas_are_bounded_in_bytes_too() {
        let small = estimated_size(&stanza_of(100));
        let outbox = Outbox::new(OutboxLimits {
            stanzas: 100,
            bytes: 3 * small,
            answer_bytes: 0,
        });
        for _ in 0..3 {
            assert!(push(&outbox, stanza_of(100)).is_ok());
        }
        assert_eq!(push(&outbox, stanza_of(100)), Err(PushError::Full));
        assert_eq!(push(&outbox, stanza_of(0)), Err(PushError::Full));
        // Popping gives the room back.
        assert!(outbox.pop().is_some());
        assert!(push(&outbox, stanza_of(100)).is_ok());
        assert_eq!(push(&outbox, stanza_of(100)), Err(PushError::Full));
    }

    #[test]
    fn an_empty_room_takes_one_stanza_of_any_size() {
        let outbox = Outbox::new(OutboxLimits {
            stanzas: 10,
            bytes: 10,
            answer_bytes: 10,
        });
        assert!(push(&outbox, stanza_of(1000)).is_ok());
        assert_eq!(push(&outbox, stanza_of(0)), Err(PushError::Full));
        assert!(outbox.push_answer(stanza_of(1000)).is_ok());
        assert_eq!(
            outbox.push_answer(stanza_of(0)),
            Err(AnswerError::Overflow { lost: 1 })
        );
    }

    #[test]
    fn a_full_outbox_still_takes_answers_and_keeps_the_order() {
        let outbox = Outbox::new(ROOMY);
        assert!(push(&outbox, Element::stanza("u1")).is_ok());
        assert!(push(&outbox, Element::stanza("u2")).is_ok());
        assert_eq!(push(&outbox, Element::stanza("u3")), Err(PushError::Full));
        for i in 0..100 {
            assert!(outbox
                .push_answer(Element::stanza(&format!("a{i}")))
                .is_ok());
        }
        assert_eq!(push(&outbox, Element::stanza("u4")), Err(PushError::Full));
        let names: Vec<String> = std::iter::from_fn(|| outbox.pop())
            .map(|item| match item {
                Outgoing::Stanza(e) => e.name,
                Outgoing::Close(c) => c.to_string(),
            })
            .collect();
        assert_eq!(names.len(), 102);
        assert_eq!(&names[..3], ["u1", "u2", "a0"]);
        assert_eq!(names[101], "a99");
        // Everything popped: both rooms are free again.
        assert!(push(&outbox, Element::stanza("u5")).is_ok());
        assert!(push(&outbox, Element::stanza("u6")).is_ok());
    }

    #[test]
    fn an_answer_over_its_room_closes_the_outbox_and_reports_the_lost_answers() {
        let answer = estimated_size(&stanza_of(50));
        let outbox = Outbox::new(OutboxLimits {
            stanzas: 8,
            bytes: 1 << 20,
            answer_bytes: 3 * answer,
        });
        assert!(push(&outbox, Element::stanza("u")).is_ok());
        for _ in 0..3 {
            assert!(outbox.push_answer(stanza_of(50)).is_ok());
        }
        assert_eq!(
            outbox.push_answer(stanza_of(50)),
            Err(AnswerError::Overflow { lost: 3 })
        );
        // Queue discarded; the stream ends with resource-constraint; nothing more is taken.
        assert!(matches!(
            outbox.pop(),
            Some(Outgoing::Close("resource-constraint"))
        ));
        assert!(outbox.pop().is_none());
        assert_eq!(outbox.push_answer(stanza_of(1)), Err(AnswerError::Closed));
        assert_eq!(push(&outbox, stanza_of(1)), Err(PushError::Closed));
        assert_eq!(outbox.seal(), 0);
    }

    #[test]
    fn seal_frees_the_queue_and_counts_the_answers_in_it() {
        let outbox = Outbox::new(ROOMY);
        assert!(push(&outbox, Element::stanza("u")).is_ok());
        assert!(outbox.push_answer(Element::stanza("a")).is_ok());
        assert!(outbox.push_answer(Element::stanza("b")).is_ok());
        assert!(outbox.pop().is_some());
        assert!(outbox.pop().is_some()); // "a" went out
        assert_eq!(outbox.seal(), 1);
        assert!(outbox.pop().is_none());
        assert_eq!(
            outbox.push_answer(Element::stanza("c")),
            Err(AnswerError::Closed)
        );
    }

    #[test]
    fn size_estimate_grows_with_content() {
        let empty = estimated_size(&Element::stanza("iq"));
        assert!(empty >= size_of::<Element>());
        let with_attr = estimated_size(&Element::stanza("iq").with_attr("id", "abc"));
        assert!(with_attr >= empty + 3 + 2);
        let nested = estimated_size(&Element::stanza("iq").with_child(stanza_of(1000)));
        assert!(nested >= empty + 1000);
    }
}
