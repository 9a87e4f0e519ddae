//! The local tier: an LRU bounded both by entry count and by total bytes, so that memory stays
//! within a budget whatever the answers' sizes. It stores already-serialized bodies as shared
//! `Bytes`: a hit clones a pointer, never the body, and does no JSON work.

use std::sync::{Arc, Mutex};

use lru::LruCache;

use super::{Key, Stored};
use crate::hooks::Hooks;

/// Roughly what an entry costs besides its body: key, list node, `Bytes` header and map slot.
pub const ENTRY_OVERHEAD: usize = 128;

fn entry_cost(v: &Stored) -> usize {
    v.body.len() + v.playground.len() + ENTRY_OVERHEAD
}

struct Inner {
    lru: LruCache<Key, Stored>,
    bytes: usize,
}

pub struct Lru {
    inner: Mutex<Inner>,
    max_entries: usize,
    max_bytes: usize,
    hooks: Arc<dyn Hooks>,
}

impl Lru {
    /// `max_entries == 0` or `max_bytes == 0` disables caching.
    pub fn new(max_entries: usize, max_bytes: usize, hooks: Arc<dyn Hooks>) -> Lru {
        Lru {
            inner: Mutex::new(Inner {
                lru: LruCache::unbounded(),
                bytes: 0,
            }),
            max_entries,
            max_bytes,
            hooks,
        }
    }

    pub fn get(&self, key: &Key) -> Option<Stored> {
        let hit = self.inner.lock().unwrap().lru.get(key).cloned();
        self.hooks.cache_lookup(hit.is_some());
        hit
    }

    pub fn insert(&self, key: Key, value: Stored) {
        let cost = entry_cost(&value);
        if self.max_entries == 0 || cost > self.max_bytes {
            return;
        }
        let mut evicted = 0u64;
        let (entries, bytes) = {
            let mut inner = self.inner.lock().unwrap();
            if let Some(old) = inner.lru.put(key, value) {
                inner.bytes -= entry_cost(&old);
            }
            inner.bytes += cost;
            while inner.lru.len() > self.max_entries || inner.bytes > self.max_bytes {
                match inner.lru.pop_lru() {
                    Some((_, old)) => {
                        inner.bytes -= entry_cost(&old);
                        evicted += 1;
                    }
                    None => break,
                }
            }
            (inner.lru.len(), inner.bytes)
        };
        if evicted > 0 {
            self.hooks.cache_evicted(evicted);
        }
        self.hooks.cache_size(entries, bytes);
    }

    /// (entries, bytes)
    pub fn size(&self) -> (usize, usize) {
        let inner = self.inner.lock().unwrap();
        (inner.lru.len(), inner.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hooks::NoHooks;
    use bytes::Bytes;

    fn stored(n: usize) -> Stored {
        Stored {
            status: 200,
            body: Bytes::from(vec![b'x'; n]),
            playground: Bytes::new(),
        }
    }

    #[test]
    fn evicts_by_entries_least_recent_first() {
        let c = Lru::new(2, usize::MAX, Arc::new(NoHooks));
        c.insert([1; 20], stored(1));
        c.insert([2; 20], stored(1));
        assert!(c.get(&[1; 20]).is_some());
        c.insert([3; 20], stored(1));
        assert!(c.get(&[2; 20]).is_none());
        assert!(c.get(&[1; 20]).is_some() && c.get(&[3; 20]).is_some());
    }

    #[test]
    fn evicts_by_bytes_and_skips_oversized() {
        let budget = 3 * (100 + ENTRY_OVERHEAD);
        let c = Lru::new(100, budget, Arc::new(NoHooks));
        for i in 0..5u8 {
            c.insert([i; 20], stored(100));
        }
        assert_eq!(c.size(), (3, budget));
        c.insert([9; 20], stored(budget));
        assert!(c.get(&[9; 20]).is_none());
        assert_eq!(c.size().0, 3);
    }

    #[test]
    fn replacing_a_key_does_not_leak_bytes() {
        let c = Lru::new(10, 10_000, Arc::new(NoHooks));
        c.insert([1; 20], stored(10));
        c.insert([1; 20], stored(20));
        assert_eq!(c.size(), (1, 20 + ENTRY_OVERHEAD));
    }
}
