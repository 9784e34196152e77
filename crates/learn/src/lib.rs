//! stopwise-learn: trains the learned stopper (pure: no I/O).
//!
//! Traces become grouped rows ([`data`]), a network is fit on them ([`train`]), and the knobs
//! are chosen by grouped cross-validation ([`search`]). The model format, the features and the
//! `learned` rule live in `stopwise-core`, so serving never needs this crate.

pub mod data;
pub mod search;
pub mod train;

pub use data::{Label, TraceRows};
pub use search::Metric;
pub use train::{train, Loss, Schedule, TrainConfig, TrainError, TrainReport};
