//! Readiness: a set of named things still pending (counted per name, so two holders of the
//! same name both have to finish). `/readyz` answers 200 once it is empty.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

#[derive(Clone, Default)]
pub struct Readiness(Arc<Mutex<BTreeMap<String, usize>>>);

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
            .entry(name.to_string())
            .and_modify(|n| *n += 1)
            .or_insert(1);
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
            .keys()
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
        // Several holders may wait under one name; the name clears with the last of them.
        let mut set = self.set.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = set.get_mut(&self.name) {
            *n -= 1;
            if *n == 0 {
                set.remove(&self.name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Readiness;

    #[test]
    fn a_name_clears_only_when_every_holder_is_done() {
        let r = Readiness::new();
        let a = r.pending("jwks");
        let b = r.pending("jwks");
        let c = r.pending("identity");
        assert_eq!(r.waiting_for(), vec!["identity", "jwks"]);
        drop(a);
        assert_eq!(r.waiting_for(), vec!["identity", "jwks"]);
        b.ready();
        c.ready();
        assert!(r.is_ready());
    }
}
