//! vhu-conform: a conformance and robustness harness for vhost-user back-ends.
//!
//! Layers, dependencies pointing down: [`cli`] → [`api`] (a whole run, its exit code) →
//! [`engine`] (scenarios, verdicts, the [`engine::RunEvent`] stream) and [`report`]
//! (consumers of the engine's events) → [`target`] (reaching a back-end) and the mock front-end
//! crate (the session) → the protocol crate (the wire).

pub mod api;
pub mod backend_json;
pub mod builtin;
pub mod cli;
pub mod device;
pub mod engine;
pub mod exit_code;
pub mod expect;
pub mod features;
pub mod frontend;
pub mod fuzz;
pub mod report;
pub mod rules;
pub mod scenario;
pub mod seed;
pub mod target;
