//! The daemon's life-cycle state that /healthz, STATUS= and metrics read.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::hooks::Hooks;

pub struct Health {
    lameduck: AtomicBool,
    hooks: Arc<dyn Hooks>,
}

impl Health {
    pub fn new(hooks: Arc<dyn Hooks>) -> Arc<Health> {
        hooks.lameduck(false);
        Arc::new(Health {
            lameduck: AtomicBool::new(false),
            hooks,
        })
    }

    pub fn is_lameduck(&self) -> bool {
        self.lameduck.load(Ordering::SeqCst)
    }

    /// From now on /healthz fails, so the load balancer stops sending us requests.
    pub fn enter_lameduck(&self) {
        if !self.lameduck.swap(true, Ordering::SeqCst) {
            self.hooks.lameduck(true);
        }
    }
}
