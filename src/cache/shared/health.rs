//! Whether the shared tier is worth asking: the outcomes of its last operations. It is marked down
//! when most of the recent ones failed (Redis stopped, unreachable or too slow for the lookup
//! budget), and up again when a probe answers. A partial failure (one Cluster node of three down)
//! keeps it up: the other nodes still share answers, and the errors show in the metrics.

/// Operations remembered.
const WINDOW: u32 = 16;
/// Failures among them that mark the tier down.
const DOWN_AT: u32 = 12;

#[derive(Debug)]
pub struct Health {
    /// One bit per remembered operation, 1 = failed; the newest is bit 0.
    failures: u16,
    up: bool,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            failures: 0,
            up: true,
        }
    }
}

impl Health {
    pub fn is_up(&self) -> bool {
        self.up
    }

    /// Records one operation's outcome; returns the new state when it changed.
    pub fn record(&mut self, ok: bool) -> Option<bool> {
        if !self.up {
            return None;
        }
        self.failures = (self.failures << 1) | u16::from(!ok);
        debug_assert_eq!(WINDOW, u16::BITS);
        if self.failures.count_ones() >= DOWN_AT {
            self.up = false;
            return Some(false);
        }
        None
    }

    pub fn mark_down(&mut self) {
        self.up = false;
    }

    /// A probe answered: up, with a clean history. Returns true when that is a change.
    pub fn probe_answered(&mut self) -> bool {
        self.failures = 0;
        !std::mem::replace(&mut self.up, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goes_down_on_mostly_failures_and_up_on_a_probe() {
        let mut h = Health::default();
        for _ in 0..DOWN_AT - 1 {
            assert_eq!(h.record(false), None);
        }
        assert_eq!(h.record(false), Some(false));
        assert!(!h.is_up());
        assert_eq!(h.record(true), None, "only a probe brings it back");
        assert!(h.probe_answered());
        assert!(h.is_up() && !h.probe_answered());
    }

    #[test]
    fn a_third_failing_keeps_it_up() {
        let mut h = Health::default();
        for i in 0..10_000 {
            assert_eq!(h.record(i % 3 != 0), None);
        }
        assert!(h.is_up());
    }
}
