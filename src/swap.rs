//! A value that is read often and replaced rarely (on reload): the TLS configuration and settings
//! a listener hands to each new connection, the account store a login checks against.
//!
//! A std `RwLock<Arc<T>>`: a reader takes the read lock only to clone the `Arc` (one atomic
//! increment under an uncontended lock, no allocation) and never holds it across an `.await`;
//! a writer swaps the `Arc`. Whoever still holds the old `Arc` (a session that started before the
//! reload) keeps using it until it drops it. No dependency (arc-swap would make the read
//! lock-free, but one uncontended read lock per accepted connection or per login is not a cost
//! worth a crate).

use std::sync::{Arc, RwLock};

pub struct Swap<T>(RwLock<Arc<T>>);

impl<T> Swap<T> {
    pub fn new(value: Arc<T>) -> Swap<T> {
        Swap(RwLock::new(value))
    }

    /// The current value.
    pub fn load(&self) -> Arc<T> {
        // A panic while holding this lock can only happen inside `Arc::clone` or an assignment:
        // the value is whole either way, so poisoning is ignored.
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replace the value; returns the previous one (dropped by the caller outside the lock).
    pub fn store(&self, value: Arc<T>) -> Arc<T> {
        let mut guard = self.0.write().unwrap_or_else(|e| e.into_inner());
        std::mem::replace(&mut *guard, value)
    }
}

impl<T> std::fmt::Debug for Swap<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Swap")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readers_keep_the_value_they_loaded() {
        let swap = Swap::new(Arc::new(1));
        let before = swap.load();
        let old = swap.store(Arc::new(2));
        assert_eq!((*before, *old, *swap.load()), (1, 1, 2));
    }
}
