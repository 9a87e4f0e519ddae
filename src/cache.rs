//! The answer cache: an LRU bounded both by entry count and by total bytes, so that memory stays
//! within a budget whatever the answers' sizes. It stores already-serialized bodies as shared
//! `Bytes`: a hit clones a pointer, never the body, and does no JSON work.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use lru::LruCache;
use sha1::{Digest, Sha1};

use crate::hooks::Hooks;

pub type Key = [u8; 20];

/// Roughly what an entry costs besides its body: key, list node, `Bytes` header and map slot.
pub const ENTRY_OVERHEAD: usize = 128;

/// SHA-1 over the sandbox fingerprint, a separator that cannot occur in it, and the program.
pub fn key(fingerprint: &str, program: &[u8]) -> Key {
    let mut h = Sha1::new();
    h.update(fingerprint.as_bytes());
    h.update([0u8]);
    h.update(program);
    h.finalize().into()
}

/// One run's answer in both dialects (`answer::Dialect`), so that a program sent raw and then as
/// a form runs once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    /// The raw dialect's status and body.
    pub status: u16,
    pub body: Bytes,
    /// The playground dialect's body; its status is `answer::CACHED_PLAYGROUND_STATUS`.
    pub playground: Bytes,
}

impl Stored {
    fn cost(&self) -> usize {
        self.body.len() + self.playground.len() + ENTRY_OVERHEAD
    }
}

struct Inner {
    lru: LruCache<Key, Stored>,
    bytes: usize,
}

pub struct Cache {
    inner: Mutex<Inner>,
    max_entries: usize,
    max_bytes: usize,
    hooks: Arc<dyn Hooks>,
}

impl Cache {
    /// `max_entries == 0` or `max_bytes == 0` disables caching.
    pub fn new(max_entries: usize, max_bytes: usize, hooks: Arc<dyn Hooks>) -> Cache {
        Cache {
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
        let cost = value.cost();
        if self.max_entries == 0 || cost > self.max_bytes {
            return;
        }
        let mut evicted = 0u64;
        let (entries, bytes) = {
            let mut inner = self.inner.lock().unwrap();
            if let Some(old) = inner.lru.put(key, value) {
                inner.bytes -= old.cost();
            }
            inner.bytes += cost;
            while inner.lru.len() > self.max_entries || inner.bytes > self.max_bytes {
                match inner.lru.pop_lru() {
                    Some((_, old)) => {
                        inner.bytes -= old.cost();
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

    fn stored(n: usize) -> Stored {
        Stored {
            status: 200,
            body: Bytes::from(vec![b'x'; n]),
            playground: Bytes::new(),
        }
    }

    #[test]
    fn evicts_by_entries_least_recent_first() {
        let c = Cache::new(2, usize::MAX, Arc::new(NoHooks));
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
        let c = Cache::new(100, budget, Arc::new(NoHooks));
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
        let c = Cache::new(10, 10_000, Arc::new(NoHooks));
        c.insert([1; 20], stored(10));
        c.insert([1; 20], stored(20));
        assert_eq!(c.size(), (1, 20 + ENTRY_OVERHEAD));
    }

    #[test]
    fn key_depends_on_fingerprint_and_program() {
        assert_ne!(key("a", b"p"), key("b", b"p"));
        assert_ne!(key("a", b"p"), key("a", b"q"));
        assert_ne!(key("ab", b""), key("a", b"b"));
    }
}
