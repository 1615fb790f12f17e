//! Readiness: a set of named things still pending. `/readyz` answers 200 once it is empty.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

#[derive(Clone, Default)]
pub struct Readiness(Arc<Mutex<BTreeSet<String>>>);

/// Held while a component is not ready; call [`Pending::ready`] (or drop it) when it is.
pub struct Pending {
    set: Readiness,
    name: String,
}

impl Readiness {
    pub fn new() -> Self {
        Self::default()
    }
    /// Registers a component that is not ready yet.
    pub fn pending(&self, name: &str) -> Pending {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string());
        Pending {
            set: self.clone(),
            name: name.to_string(),
        }
    }
    /// Names of components not ready yet.
    pub fn waiting_for(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }
    pub fn is_ready(&self) -> bool {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).is_empty()
    }
}

impl Pending {
    pub fn ready(self) {}
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.set
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.name);
    }
}
