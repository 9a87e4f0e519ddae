//! The answer cache, as the compile service sees it: a local LRU in front of an optional shared
//! tier on Redis. A local hit never leaves the process; a shared hit fills the local tier; a new
//! answer goes into both (the shared write in the background).

mod lru;
pub mod shared;
pub mod value;

use std::sync::Arc;

use sha1::{Digest, Sha1};

use crate::hooks::Hooks;
pub use lru::{ENTRY_OVERHEAD, Lru};
pub use shared::{SharedCache, SharedSettings};
pub use value::Stored;

pub type Key = [u8; 20];

/// SHA-1 over the sandbox fingerprint, a separator that cannot occur in it, and the program.
pub fn key(fingerprint: &str, program: &[u8]) -> Key {
    let mut h = Sha1::new();
    h.update(fingerprint.as_bytes());
    h.update([0u8]);
    h.update(program);
    h.finalize().into()
}

pub struct Cache {
    local: Lru,
    shared: Option<SharedCache>,
}

impl Cache {
    /// `max_entries == 0` or `max_bytes == 0` disables the local tier.
    pub fn new(
        max_entries: usize,
        max_bytes: usize,
        shared: Option<SharedCache>,
        hooks: Arc<dyn Hooks>,
    ) -> Cache {
        Cache {
            local: Lru::new(max_entries, max_bytes, hooks),
            shared,
        }
    }

    /// The local tier only: this is the hot path, with no await and no I/O.
    pub fn get(&self, key: &Key) -> Option<Stored> {
        self.local.get(key)
    }

    /// The shared tier, within its time budget; a hit is copied into the local tier.
    pub async fn get_shared(&self, key: &Key) -> Option<Stored> {
        let found = self.shared.as_ref()?.get(key).await?;
        self.local.insert(*key, found.clone());
        Some(found)
    }

    /// Into the local tier, and queued for the shared one.
    pub fn insert(&self, key: Key, value: Stored) {
        if let Some(shared) = &self.shared {
            shared.put(&key, &value);
        }
        self.local.insert(key, value);
    }

    /// (entries, bytes) of the local tier.
    pub fn size(&self) -> (usize, usize) {
        self.local.size()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_depends_on_fingerprint_and_program() {
        assert_ne!(key("a", b"p"), key("b", b"p"));
        assert_ne!(key("a", b"p"), key("a", b"q"));
        assert_ne!(key("ab", b""), key("a", b"b"));
    }
}
