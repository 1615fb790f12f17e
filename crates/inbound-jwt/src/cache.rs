//! The verified-token cache: SHA-256(token) → verified claims, bounded, sharded.
//!
//! Each shard keeps two generations of at most `per_gen` entries: a hit in the older
//! generation is promoted; when the current generation is full it becomes the older one and
//! the older one is dropped whole. That bounds the size at `capacity` with O(1) eviction and no
//! per-entry bookkeeping (an approximation of LRU). Entries are only returned while the token
//! is unexpired and the key set has not changed since it was verified.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::{Arc, Mutex};

use crate::validator::VerifiedClaims;

/// A SHA-256 digest as a map key. The digest is already uniformly distributed and cannot be
/// steered by an attacker, so its first 8 bytes are the hash.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct TokenHash(pub(crate) [u8; 32]);

impl Hash for TokenHash {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let mut first = [0u8; 8];
        first.copy_from_slice(&self.0[..8]);
        state.write_u64(u64::from_le_bytes(first));
    }
}

#[derive(Default)]
pub(crate) struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
    fn write(&mut self, bytes: &[u8]) {
        // Not used by `TokenHash`; a simple FNV-1a keeps the type total.
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }
}

type Map = HashMap<TokenHash, Entry, BuildHasherDefault<DigestHasher>>;

#[derive(Clone)]
pub(crate) struct Entry {
    pub(crate) claims: Arc<VerifiedClaims>,
    /// Unix seconds from which the token counts as expired (`exp + clock_skew`).
    pub(crate) expired_at: f64,
    /// Key-set generation the signature was checked against.
    pub(crate) generation: u64,
}

impl Entry {
    fn usable(&self, now: f64, generation: u64) -> bool {
        now < self.expired_at && self.generation == generation
    }
}

struct Shard {
    cur: Map,
    prev: Map,
}

pub(crate) struct VerifiedCache {
    shards: Box<[Mutex<Shard>]>,
    mask: usize,
    per_gen: usize,
}

impl VerifiedCache {
    /// `None` for capacity 0 (cache disabled).
    pub(crate) fn new(capacity: usize) -> Option<Self> {
        if capacity == 0 {
            return None;
        }
        // Power-of-two shard count, at most 16, with at least 2 entries per shard.
        let mut shards = 16usize;
        while shards > 1 && capacity / shards < 2 {
            shards /= 2;
        }
        let per_gen = (capacity / shards / 2).max(1);
        let shards = (0..shards)
            .map(|_| {
                Mutex::new(Shard {
                    cur: Map::default(),
                    prev: Map::default(),
                })
            })
            .collect::<Vec<_>>()
            .into_boxed_slice();
        Some(Self {
            mask: shards.len() - 1,
            shards,
            per_gen,
        })
    }

    /// Upper bound on the number of entries held.
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.shards.len() * self.per_gen * 2
    }

    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let s = s.lock().unwrap_or_else(|e| e.into_inner());
                s.cur.len() + s.prev.len()
            })
            .sum()
    }

    fn shard(&self, key: &TokenHash) -> &Mutex<Shard> {
        &self.shards[usize::from(key.0[8]) & self.mask]
    }

    pub(crate) fn get(
        &self,
        key: &TokenHash,
        now: f64,
        generation: u64,
    ) -> Option<Arc<VerifiedClaims>> {
        let mut s = self.shard(key).lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = s.cur.get(key) {
            if e.usable(now, generation) {
                return Some(e.claims.clone());
            }
            s.cur.remove(key);
            return None;
        }
        let e = s.prev.remove(key)?;
        if !e.usable(now, generation) {
            return None;
        }
        let claims = e.claims.clone();
        let dropped = self.insert_locked(&mut s, *key, e);
        drop(s);
        drop(dropped);
        Some(claims)
    }

    pub(crate) fn insert(&self, key: TokenHash, entry: Entry) {
        let mut s = self.shard(&key).lock().unwrap_or_else(|e| e.into_inner());
        let dropped = self.insert_locked(&mut s, key, entry);
        drop(s);
        drop(dropped);
    }

    /// Inserts into the current generation, rotating when it is full; returns the dropped
    /// generation so it is freed outside the lock.
    fn insert_locked(&self, s: &mut Shard, key: TokenHash, entry: Entry) -> Option<Map> {
        let mut dropped = None;
        if s.cur.len() >= self.per_gen && !s.cur.contains_key(&key) {
            let fresh = Map::with_capacity_and_hasher(self.per_gen, Default::default());
            let old_cur = std::mem::replace(&mut s.cur, fresh);
            dropped = Some(std::mem::replace(&mut s.prev, old_cur));
            s.prev.remove(&key);
        }
        s.cur.insert(key, entry);
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn claims() -> Arc<VerifiedClaims> {
        Arc::new(VerifiedClaims {
            sub: None,
            iss: "i".into(),
            client_id: None,
            exp: 100,
            aud: vec![],
            sub_header: None,
            iss_header: HeaderValue::from_static("i"),
            client_id_header: None,
        })
    }

    fn key(i: u32) -> TokenHash {
        use sha2::Digest;
        TokenHash(sha2::Sha256::digest(i.to_be_bytes()).into())
    }

    fn entry(exp: f64, generation: u64) -> Entry {
        Entry {
            claims: claims(),
            expired_at: exp,
            generation,
        }
    }

    #[test]
    fn bounded_and_recent_kept() {
        let c = VerifiedCache::new(100).unwrap();
        assert!(c.capacity() <= 100);
        for i in 0..10_000 {
            c.insert(key(i), entry(1e12, 0));
            // keep key 0 hot
            assert!(c.get(&key(0), 0.0, 0).is_some(), "at {i}");
        }
        assert!(c.len() <= c.capacity());
        assert!(c.get(&key(9_999), 0.0, 0).is_some());
    }

    #[test]
    fn expiry_and_generation() {
        let c = VerifiedCache::new(10).unwrap();
        c.insert(key(1), entry(50.0, 3));
        assert!(c.get(&key(1), 49.9, 3).is_some());
        assert!(c.get(&key(1), 49.9, 4).is_none());
        c.insert(key(1), entry(50.0, 3));
        assert!(c.get(&key(1), 50.0, 3).is_none());
        assert!(
            c.get(&key(1), 10.0, 3).is_none(),
            "expired entries are removed"
        );
    }

    #[test]
    fn tiny_capacities() {
        for cap in 1..40 {
            let c = VerifiedCache::new(cap).unwrap();
            for i in 0..500 {
                c.insert(key(i), entry(1e12, 0));
            }
            assert!(c.len() <= cap.max(2), "cap {cap}: {}", c.len());
        }
        assert!(VerifiedCache::new(0).is_none());
    }
}
