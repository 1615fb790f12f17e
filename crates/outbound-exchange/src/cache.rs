//! The exchanged-token cache: bounded, keyed by a hash of (subject token, audience, scopes,
//! token URL), entries expire at `expires_in` minus a margin, and concurrent identical misses
//! share one exchange (single-flight). An expired entry is never served.

use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Cache key: SHA-256 over the length-prefixed parts, so the subject token itself is not kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheKey([u8; 32]);

impl CacheKey {
    pub fn new(
        subject: Option<&str>,
        audience: Option<&str>,
        scopes: Option<&str>,
        token_url: &str,
    ) -> Self {
        let mut h = Sha256::new();
        for part in [subject, audience, scopes, Some(token_url)] {
            match part {
                Some(p) => {
                    h.update([1u8]);
                    h.update((p.len() as u64).to_be_bytes());
                    h.update(p.as_bytes());
                }
                None => h.update([0u8]),
            }
        }
        CacheKey(h.finalize().into())
    }
}

/// How a lookup was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Hit,
    /// This caller performed the exchange.
    Miss,
    /// Joined an exchange already in flight.
    Shared,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::Miss => "miss",
            Outcome::Shared => "shared",
        }
    }
}

type Shared<E> = Option<Result<Arc<str>, E>>;

enum Slot<E> {
    Ready {
        token: Arc<str>,
        expires_at: Instant,
    },
    Pending(watch::Receiver<Shared<E>>),
}

/// Cache settings.
#[derive(Debug, Clone, Copy)]
pub struct CacheConfig {
    pub max_entries: usize,
    /// Subtracted from `expires_in` (capped at a fifth of the lifetime for short tokens).
    pub margin: Duration,
    /// Used when the STS gives no `expires_in`.
    pub default_lifetime: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            max_entries: 10_000,
            margin: Duration::from_secs(30),
            default_lifetime: Duration::from_secs(60),
        }
    }
}

pub struct TokenCache<E> {
    slots: Mutex<HashMap<CacheKey, Slot<E>>>,
    cfg: CacheConfig,
}

struct LeaderGuard<'a, E: Clone + Send + Sync + 'static> {
    cache: &'a TokenCache<E>,
    key: CacheKey,
    done: bool,
}

impl<E: Clone + Send + Sync + 'static> Drop for LeaderGuard<'_, E> {
    fn drop(&mut self) {
        if !self.done {
            // The exchange was cancelled: let waiters retry.
            let mut slots = self.cache.lock();
            if matches!(slots.get(&self.key), Some(Slot::Pending(_))) {
                slots.remove(&self.key);
            }
        }
    }
}

impl<E: Clone + Send + Sync + 'static> TokenCache<E> {
    pub fn new(cfg: CacheConfig) -> Self {
        Self {
            slots: Mutex::new(HashMap::new()),
            cfg,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<CacheKey, Slot<E>>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Number of entries (ready or pending).
    pub fn len(&self) -> usize {
        self.lock().len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// When a token with `expires_in` should stop being served.
    fn lifetime(&self, expires_in: Option<Duration>) -> Duration {
        let life = expires_in.unwrap_or(self.cfg.default_lifetime);
        let margin = self.cfg.margin.min(life / 5);
        life.saturating_sub(margin)
    }

    /// A cached token, or the result of `fetch` (shared with concurrent identical callers).
    /// `fetch` returns the token and its `expires_in`.
    pub async fn get_or_fetch<F, Fut>(
        &self,
        key: CacheKey,
        fetch: F,
    ) -> (Result<Arc<str>, E>, Outcome)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(Arc<str>, Option<Duration>), E>>,
    {
        let tx = loop {
            let mut rx = {
                let mut slots = self.lock();
                match slots.get(&key) {
                    Some(Slot::Ready { token, expires_at }) if *expires_at > Instant::now() => {
                        return (Ok(token.clone()), Outcome::Hit);
                    }
                    Some(Slot::Pending(rx)) => rx.clone(),
                    _ => {
                        let (tx, rx) = watch::channel(None);
                        self.make_room(&mut slots);
                        slots.insert(key, Slot::Pending(rx));
                        break tx;
                    }
                }
            };
            let shared = match rx.wait_for(Option::is_some).await {
                Ok(v) => v.as_ref().cloned(),
                Err(_) => None, // leader cancelled: try again
            };
            if let Some(r) = shared {
                return (r, Outcome::Shared);
            }
        };
        let mut guard = LeaderGuard {
            cache: self,
            key,
            done: false,
        };
        let result = fetch().await;
        let shared: Result<Arc<str>, E> = {
            let mut slots = self.lock();
            match result {
                Ok((token, expires_in)) => {
                    let life = self.lifetime(expires_in);
                    if life.is_zero() {
                        slots.remove(&key);
                    } else {
                        slots.insert(
                            key,
                            Slot::Ready {
                                token: token.clone(),
                                expires_at: Instant::now() + life,
                            },
                        );
                    }
                    Ok(token)
                }
                Err(e) => {
                    slots.remove(&key);
                    Err(e)
                }
            }
        };
        guard.done = true;
        let _ = tx.send(Some(shared.clone()));
        (shared, Outcome::Miss)
    }

    /// Keeps the map under `max_entries`: drop expired entries, then, if still full, an
    /// arbitrary tenth of the ready ones.
    fn make_room(&self, slots: &mut HashMap<CacheKey, Slot<E>>) {
        if slots.len() < self.cfg.max_entries {
            return;
        }
        let now = Instant::now();
        slots.retain(|_, s| !matches!(s, Slot::Ready { expires_at, .. } if *expires_at <= now));
        if slots.len() < self.cfg.max_entries {
            return;
        }
        let mut to_drop = (self.cfg.max_entries / 10).max(1);
        slots.retain(|_, s| {
            if to_drop > 0 && matches!(s, Slot::Ready { .. }) {
                to_drop -= 1;
                false
            } else {
                true
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn cache(max: usize) -> Arc<TokenCache<String>> {
        Arc::new(TokenCache::new(CacheConfig {
            max_entries: max,
            margin: Duration::from_secs(30),
            default_lifetime: Duration::from_secs(60),
        }))
    }

    #[test]
    fn keys_differ_per_part() {
        let a = CacheKey::new(Some("t"), Some("aud"), None, "u");
        assert_ne!(a, CacheKey::new(Some("t"), Some("aud"), Some(""), "u"));
        assert_ne!(a, CacheKey::new(Some("t"), None, Some("aud"), "u"));
        assert_ne!(a, CacheKey::new(Some("t2"), Some("aud"), None, "u"));
        assert_ne!(a, CacheKey::new(Some("t"), Some("aud"), None, "u2"));
        assert_eq!(a, CacheKey::new(Some("t"), Some("aud"), None, "u"));
    }

    #[tokio::test]
    async fn hit_after_miss_and_single_flight() {
        let c = cache(100);
        let calls = Arc::new(AtomicUsize::new(0));
        let key = CacheKey::new(Some("s"), Some("a"), None, "u");
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let c = c.clone();
            let calls = calls.clone();
            tasks.push(tokio::spawn(async move {
                c.get_or_fetch(key, || async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok::<_, String>((Arc::from("tok"), Some(Duration::from_secs(300))))
                })
                .await
            }));
        }
        let mut outcomes = Vec::new();
        for t in tasks {
            let (r, o) = t.await.unwrap();
            assert_eq!(&*r.unwrap(), "tok");
            outcomes.push(o);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(outcomes.iter().filter(|o| **o == Outcome::Miss).count(), 1);
        let (_, o) = c
            .get_or_fetch(key, || async {
                Err::<(Arc<str>, _), _>("unused".to_string())
            })
            .await;
        assert_eq!(o, Outcome::Hit);
    }

    #[tokio::test]
    async fn errors_are_shared_but_not_cached() {
        let c = cache(100);
        let key = CacheKey::new(Some("s"), None, None, "u");
        let (r, _) = c
            .get_or_fetch(key, || async {
                Err::<(Arc<str>, _), _>("boom".to_string())
            })
            .await;
        assert_eq!(r.unwrap_err(), "boom");
        let (r, o) = c
            .get_or_fetch(key, || async { Ok::<_, String>((Arc::from("t"), None)) })
            .await;
        assert_eq!((r.unwrap().as_ref(), o), ("t", Outcome::Miss));
    }

    #[tokio::test]
    async fn short_lived_tokens_expire() {
        let c = cache(100);
        let key = CacheKey::new(Some("s"), None, None, "u");
        // expires_in 0: never cached.
        let _ = c
            .get_or_fetch(key, || async {
                Ok::<_, String>((Arc::from("t"), Some(Duration::ZERO)))
            })
            .await;
        assert!(c.is_empty());
        // 1 s lifetime, 0.2 s margin: gone after 0.8 s.
        let _ = c
            .get_or_fetch(key, || async {
                Ok::<_, String>((Arc::from("t"), Some(Duration::from_secs(1))))
            })
            .await;
        tokio::time::sleep(Duration::from_millis(900)).await;
        let (_, o) = c
            .get_or_fetch(key, || async { Ok::<_, String>((Arc::from("t2"), None)) })
            .await;
        assert_eq!(o, Outcome::Miss);
    }

    #[tokio::test]
    async fn bounded() {
        let c = cache(50);
        for i in 0..500 {
            let key = CacheKey::new(Some(&i.to_string()), None, None, "u");
            let _ = c
                .get_or_fetch(key, || async { Ok::<_, String>((Arc::from("t"), None)) })
                .await;
            assert!(c.len() <= 50);
        }
    }

    #[tokio::test]
    async fn cancelled_leader_lets_waiters_retry() {
        let c = cache(10);
        let key = CacheKey::new(Some("s"), None, None, "u");
        let c2 = c.clone();
        let leader = tokio::spawn(async move {
            c2.get_or_fetch(key, || async {
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok::<_, String>((Arc::from("never"), None))
            })
            .await
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let c3 = c.clone();
        let waiter = tokio::spawn(async move {
            c3.get_or_fetch(key, || async {
                Ok::<_, String>((Arc::from("retried"), None))
            })
            .await
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        leader.abort();
        let (r, o) = waiter.await.unwrap();
        assert_eq!((r.unwrap().as_ref(), o), ("retried", Outcome::Miss));
    }
}
