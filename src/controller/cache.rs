//! A small time-limited cache for what the controller reads often and may see a little late
//! (pools, deployments, parsed templates).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Entries live `ttl` after they were stored; expired ones are dropped when a new one is stored.
pub struct TtlCache<K, V> {
    ttl: Duration,
    entries: Mutex<HashMap<K, (Instant, V)>>,
}

impl<K: Eq + Hash + Clone, V: Clone> TtlCache<K, V> {
    /// An empty cache whose entries live `ttl`.
    pub fn new(ttl: Duration) -> Self {
        TtlCache {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The entry for `key`, unless it is missing or expired.
    pub fn get(&self, key: &K) -> Option<V> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .get(key)
            .filter(|(at, _)| at.elapsed() < self.ttl)
            .map(|(_, v)| v.clone())
    }

    /// Stores `value` under `key` (fresh for `ttl`).
    pub fn insert(&self, key: K, value: V) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.retain(|_, (at, _)| at.elapsed() < self.ttl);
        entries.insert(key, (Instant::now(), value));
    }

    /// The fresh entry for `key`, or what `fetch` returns (stored when it is `Ok`).
    pub async fn get_or_fetch<E, F>(&self, key: K, fetch: F) -> Result<V, E>
    where
        F: std::future::Future<Output = Result<V, E>>,
    {
        if let Some(v) = self.get(&key) {
            return Ok(v);
        }
        let value = fetch.await?;
        self.insert(key, value.clone());
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn entries_expire_and_are_fetched_again() {
        let cache = TtlCache::new(Duration::from_millis(30));
        let first: Result<u32, ()> = cache.get_or_fetch("a", async { Ok(1) }).await;
        assert_eq!(first, Ok(1));
        let cached: Result<u32, ()> = cache.get_or_fetch("a", async { Ok(2) }).await;
        assert_eq!(cached, Ok(1), "fresh entries are reused");
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert_eq!(cache.get(&"a"), None);
        let refetched: Result<u32, ()> = cache.get_or_fetch("a", async { Ok(3) }).await;
        assert_eq!(refetched, Ok(3));
        let failed: Result<u32, &str> = cache.get_or_fetch("b", async { Err("down") }).await;
        assert_eq!(failed, Err("down"));
        assert_eq!(cache.get(&"b"), None, "errors are not cached");
    }
}
