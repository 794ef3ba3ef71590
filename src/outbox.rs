//! The bounded queue toward one connection. Other tasks push; the connection's own task drains.
//!
//! Policy when full: `push` fails with [`PushError::Full`] and the caller answers for the stanza
//! itself (a request gets `<resource-constraint/>`); nothing waits. A connection whose peer stops
//! reading is closed by its own task when a write does not finish within the stuck-session grace.
//! The lock is a plain mutex held only for a push or a pop, never across an `.await`.

use crate::xml::Element;
use std::collections::VecDeque;
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

pub struct Outbox {
    state: Mutex<State>,
    notify: Notify,
    capacity: usize,
}

struct State {
    queue: VecDeque<Outgoing>,
    closed: bool,
}

impl Outbox {
    pub fn new(capacity: usize) -> Outbox {
        Outbox {
            state: Mutex::new(State {
                // Starts without heap allocation: most CPEs receive nothing for days.
                queue: VecDeque::new(),
                closed: false,
            }),
            notify: Notify::new(),
            capacity,
        }
    }

    pub fn push(&self, element: Element) -> Result<(), PushError> {
        {
            let mut state = self.lock();
            if state.closed {
                return Err(PushError::Closed);
            }
            if state.queue.len() >= self.capacity {
                return Err(PushError::Full);
            }
            state.queue.push_back(Outgoing::Stanza(element));
        }
        self.notify.notify_one();
        Ok(())
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
            state.queue.push_back(Outgoing::Close(condition));
        }
        self.notify.notify_one();
        true
    }

    /// Mark closed without a message (the connection's task is ending by itself).
    pub fn seal(&self) {
        self.lock().closed = true;
    }

    pub fn pop(&self) -> Option<Outgoing> {
        let mut state = self.lock();
        let item = state.queue.pop_front();
        if state.queue.is_empty() && state.queue.capacity() > 4 {
            // Give memory back once a burst is over.
            state.queue = VecDeque::new();
        }
        item
    }

    pub fn len(&self) -> usize {
        self.lock().queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_and_closed() {
        let outbox = Outbox::new(2);
        assert!(outbox.push(Element::stanza("a")).is_ok());
        assert!(outbox.push(Element::stanza("b")).is_ok());
        assert_eq!(outbox.push(Element::stanza("c")), Err(PushError::Full));
        assert!(outbox.close("conflict"));
        assert!(!outbox.close("conflict"));
        assert_eq!(outbox.push(Element::stanza("d")), Err(PushError::Closed));
        assert!(matches!(outbox.pop(), Some(Outgoing::Stanza(e)) if e.name == "a"));
        assert!(matches!(outbox.pop(), Some(Outgoing::Stanza(e)) if e.name == "b"));
        assert!(matches!(outbox.pop(), Some(Outgoing::Close("conflict"))));
        assert!(outbox.pop().is_none());
    }
}
