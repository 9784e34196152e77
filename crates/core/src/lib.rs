//! stopwise-core: the pure heart of stopwise.
//!
//! Everything here is a plain function over data: no I/O, no async, no global state.
//! The trace format ([`trace`]), answer extraction and Exact Match ([`answer`]), stop rules
//! ([`policy`]), replay of rules over recorded traces ([`replay`]), threshold sweeps with
//! Pareto frontiers ([`sweep`]), certified thresholds with finite-sample guarantees
//! ([`certify`]), and the learned stopper's features ([`features`]) and model ([`learned`]).
//! I/O (files, models, HTTP) lives in the other crates.

pub mod answer;
pub mod certify;
pub mod features;
pub mod learned;
pub mod online;
pub mod policy;
pub mod recorder;
pub mod replay;
pub mod rng;
pub mod rules;
pub mod sweep;
pub mod trace;

pub use answer::Task;
pub use trace::{Checkpoint, Final, ProbeSettings, Served, Trace, TraceError};
