//! A small, bounded cache of backend answers, in front of [`crate::dedupe::SingleFlight`].
//!
//! The key names the backend, the rendered query and the window it is evaluated over (the
//! window's end is the evaluation instant), so a hit is the same question about the same
//! instant: a redelivered or retried analysis request gets the answer its first delivery got
//! without asking the backend again. Entries expire after a TTL, and the cache holds at most
//! a fixed number of them (the oldest goes first). Only answers are cached, never errors: a
//! retry after a failed query asks again.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// How long an answer is reused when the analyzer is not told otherwise.
pub const DEFAULT_TTL: Duration = Duration::from_secs(120);

/// How many answers are kept when the analyzer is not told otherwise.
pub const DEFAULT_CAPACITY: usize = 4096;

/// Answers keyed by `K`, each kept for at most `ttl`, at most `capacity` of them.
#[derive(Debug)]
pub struct ResultCache<K, V> {
    ttl: Duration,
    capacity: usize,
    entries: Mutex<HashMap<K, (Instant, V)>>,
}

impl<K, V> Default for ResultCache<K, V> {
    fn default() -> Self {
        Self {
            ttl: DEFAULT_TTL,
            capacity: DEFAULT_CAPACITY,
            entries: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Eq + Hash + Clone, V: Clone> ResultCache<K, V> {
    /// A cache keeping at most `capacity` answers (0 disables it), each for `ttl`.
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            ttl,
            capacity,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The answer stored for `key`, if it has not expired.
    pub fn get(&self, key: &K) -> Option<V> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        match entries.get(key) {
            Some((at, value)) if at.elapsed() < self.ttl => Some(value.clone()),
            Some(_) => {
                entries.remove(key);
                None
            }
            None => None,
        }
    }

    /// Stores `value` for `key`, making room by dropping expired answers, then the oldest.
    pub fn insert(&self, key: K, value: V) {
        if self.capacity == 0 {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= self.capacity && !entries.contains_key(&key) {
            entries.retain(|_, (at, _)| at.elapsed() < self.ttl);
            while entries.len() >= self.capacity {
                let oldest = entries
                    .iter()
                    .min_by_key(|(_, (at, _))| *at)
                    .map(|(k, _)| k.clone());
                match oldest {
                    Some(k) => entries.remove(&k),
                    None => break,
                };
            }
        }
        entries.insert(key, (Instant::now(), value));
    }

    /// Answers held now (expired ones included until they are dropped).
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether the cache holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_reused_until_they_expire() {
        let cache = ResultCache::new(8, Duration::from_millis(50));
        cache.insert("q", 1);
        assert_eq!(cache.get(&"q"), Some(1));
        assert_eq!(cache.get(&"other"), None);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(cache.get(&"q"), None);
        assert!(cache.is_empty(), "an expired answer is dropped when read");
    }

    #[test]
    fn the_oldest_answer_makes_room() {
        let cache = ResultCache::new(2, Duration::from_secs(60));
        cache.insert(1, "a");
        std::thread::sleep(Duration::from_millis(2));
        cache.insert(2, "b");
        std::thread::sleep(Duration::from_millis(2));
        cache.insert(3, "c");
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get(&1), None);
        assert_eq!((cache.get(&2), cache.get(&3)), (Some("b"), Some("c")));
        let off = ResultCache::new(0, Duration::from_secs(60));
        off.insert(1, 1);
        assert_eq!(off.get(&1), None);
    }
}
