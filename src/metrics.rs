//! Prometheus metrics on the daemon's own registry (filled in by its own change).

use crate::hooks::Hooks;

pub struct Metrics {}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics {}
    }

    pub fn render(&self) -> String {
        String::new()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Hooks for Metrics {}
