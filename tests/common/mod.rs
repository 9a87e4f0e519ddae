//! Shared test helpers, one module per area.

pub mod docker;
