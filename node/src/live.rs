//! [`Live`]: a value the running node reads on every use and a reload replaces
//! (origins, the TTL policy, the admin token). A leaf: the parts that read live
//! values and the reloader that replaces them both depend on it, not on each other.

use std::sync::{Arc, RwLock};

/// A value the running node reads on every use and a reload replaces.
#[derive(Debug)]
pub struct Live<T>(RwLock<Arc<T>>);

impl<T> Live<T> {
    /// Starts with `value`.
    pub fn new(value: T) -> Self {
        Self(RwLock::new(Arc::new(value)))
    }

    /// The current value.
    pub fn get(&self) -> Arc<T> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces it; readers holding the old value finish with it.
    pub fn set(&self, value: T) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(value);
    }
}
