//! compilerd: the execution backend of code playgrounds. A frontend POSTs a program to /compile;
//! compilerd runs it in a fresh, locked-down sandbox and answers with its output as JSON, in the
//! wire format of the Go playground's compile server.

pub mod admission;
pub mod answer;
pub mod backend;
pub mod cache;
pub mod compile;
pub mod config;
pub mod faketime;
pub mod fdlimit;
pub mod format;
pub mod goplay;
pub mod hooks;
pub mod http;
pub mod judge0;
pub mod languages;
pub mod lifecycle;
pub mod logging;
pub mod metrics;
pub mod run;
pub mod sandbox;
pub mod server;
pub mod systemd;
