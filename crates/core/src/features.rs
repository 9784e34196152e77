//! The learned stopper's features: one versioned schema, computed by one streaming state.
//!
//! [`FeatureState`] is fed a request's checkpoints in order and returns the feature vector of
//! each; it never looks ahead (not at later checkpoints, not at the final answer), so the vector
//! at a checkpoint is the same whether it is computed online while the model generates or in
//! replay over a recorded trace. [`trace_features`] (training, sweeps) and the `learned` rule's
//! state machine (replay, serving) both go through it, and a property test checks that a
//! truncated trace yields the same vectors as the prefix of the whole one.
//!
//! Any change to what a feature means, or to their order, must bump [`FEATURE_SCHEMA_VERSION`]:
//! model files carry the version they were trained on and a mismatch is refused.

use std::collections::HashSet;

use crate::answer::{self, Task};
use crate::rules::signals::{consistency_key, next_run, LogprobMean};
use crate::trace::{Checkpoint, Trace};

/// Version of the feature schema below; stored in every model file.
pub const FEATURE_SCHEMA_VERSION: u32 = 1;

/// Tokens of the log-probability window feature (DeepConf's window).
const WINDOW_TOKENS: u32 = 128;

/// Names of the features, in vector order.
pub const FEATURE_NAMES: [&str; FEATURES] = [
    "tokens",
    "log_tokens",
    "probes",
    "answer_empty",
    "stable_probes",
    "stable_tokens",
    "distinct_answers",
    "answer_changes",
    "mean_prob",
    "min_prob",
    "max_mean_prob",
    "mean_prob_delta",
    "answer_tokens",
    "segment_logprob",
    "segment_entropy",
    "window_logprob",
    "mean_logprob",
    "mean_entropy",
    "hedging",
    "hedge_share",
    "question_words",
    "prompt_tokens",
];

/// Number of features in schema v1.
pub const FEATURES: usize = 22;

/// One checkpoint's feature vector.
pub type Features = [f64; FEATURES];

/// What is known about a request before its first checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestInfo {
    pub task: Task,
    pub prompt_tokens: u32,
    /// Words in the question; 0 when unknown.
    pub question_words: u32,
}

impl RequestInfo {
    /// A request known only by its task (question length and prompt size unknown: zeros).
    pub fn task_only(task: Task) -> Self {
        RequestInfo { task, prompt_tokens: 0, question_words: 0 }
    }

    pub fn of(trace: &Trace) -> Self {
        RequestInfo {
            task: trace.task,
            prompt_tokens: trace.prompt_tokens,
            question_words: trace.question.as_deref().map_or(0, |q| q.split_whitespace().count() as u32),
        }
    }
}

/// Streaming feature computation for one request.
#[derive(Debug, Clone)]
pub struct FeatureState {
    request: RequestInfo,
    probes: u32,
    last_key: Option<String>,
    run: u32,
    run_started_at: u32,
    seen: HashSet<String>,
    changes: u32,
    previous_answer: Option<String>,
    max_mean_prob: f64,
    previous_mean_prob: Option<f64>,
    window: LogprobMean,
    last_tokens: u32,
    logprob_sum: f64,
    entropy_sum: f64,
    hedges: u32,
}

impl FeatureState {
    pub fn new(request: RequestInfo) -> Self {
        FeatureState {
            request,
            probes: 0,
            last_key: None,
            run: 0,
            run_started_at: 0,
            seen: HashSet::new(),
            changes: 0,
            previous_answer: None,
            max_mean_prob: 0.0,
            previous_mean_prob: None,
            window: LogprobMean::new(WINDOW_TOKENS),
            last_tokens: 0,
            logprob_sum: 0.0,
            entropy_sum: 0.0,
            hedges: 0,
        }
    }

    /// Feeds the next checkpoint (in order) and returns its feature vector.
    pub fn push(&mut self, c: &Checkpoint) -> Features {
        self.probes += 1;
        let key = consistency_key(self.request.task, c, false);
        self.run = next_run(self.last_key.as_deref(), key.as_deref(), self.run);
        if self.run == 1 {
            // The answer appeared at this probe: it has been stable since the previous one.
            self.run_started_at = self.last_tokens;
        }
        let normalised = answer::normalize(self.request.task, &c.answer);
        if self.previous_answer.as_deref().is_some_and(|p| p != normalised) {
            self.changes += 1;
        }
        if let Some(k) = &key {
            self.seen.insert(k.clone());
        }
        self.previous_answer = Some(normalised);
        self.last_key = key;

        let mean_prob = f64::from(c.mean_prob);
        let mean_prob_delta = self.previous_mean_prob.map_or(0.0, |p| mean_prob - p);
        self.previous_mean_prob = Some(mean_prob);
        self.max_mean_prob = self.max_mean_prob.max(mean_prob);

        // The window is empty only for a checkpoint at the same token count as the previous one,
        // which a valid trace never has; fall back to the segment so online input cannot yield -inf.
        let window_logprob =
            Some(self.window.push(c)).filter(|w| w.is_finite()).unwrap_or(f64::from(c.segment_logprob));
        let segment = f64::from(c.tokens.saturating_sub(self.last_tokens));
        self.logprob_sum += segment * f64::from(c.segment_logprob);
        self.entropy_sum += segment * f64::from(c.segment_entropy);
        self.last_tokens = c.tokens;
        let tokens = f64::from(c.tokens.max(1));

        let hedging = answer::is_hedging(&c.probe_text);
        self.hedges += u32::from(hedging);

        [
            f64::from(c.tokens),
            f64::from(c.tokens).ln_1p(),
            f64::from(self.probes),
            f64::from(u8::from(c.answer.is_empty())),
            f64::from(self.run),
            if self.run == 0 { 0.0 } else { f64::from(c.tokens - self.run_started_at) },
            self.seen.len() as f64,
            f64::from(self.changes),
            mean_prob,
            f64::from(c.min_prob),
            self.max_mean_prob,
            mean_prob_delta,
            f64::from(c.answer_tokens),
            f64::from(c.segment_logprob),
            f64::from(c.segment_entropy),
            window_logprob,
            self.logprob_sum / tokens,
            self.entropy_sum / tokens,
            f64::from(u8::from(hedging)),
            f64::from(self.hedges) / f64::from(self.probes),
            f64::from(self.request.question_words),
            f64::from(self.request.prompt_tokens),
        ]
    }
}

/// The feature vector of every checkpoint of a trace (replay and training).
pub fn trace_features(trace: &Trace) -> Vec<Features> {
    let mut state = FeatureState::new(RequestInfo::of(trace));
    trace.checkpoints.iter().map(|c| state.push(c)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::tests::sample;

    fn feature(name: &str) -> usize {
        FEATURE_NAMES.iter().position(|n| *n == name).unwrap()
    }

    #[test]
    fn names_are_unique() {
        let unique: HashSet<_> = FEATURE_NAMES.iter().collect();
        assert_eq!(unique.len(), FEATURES);
    }

    #[test]
    fn stability_and_distinct_answers_follow_the_probes() {
        let mut t = sample();
        let mut third = t.checkpoints[1].clone();
        third.tokens = 96;
        t.checkpoints.push(third);
        t.final_.tokens = 100;
        let rows = trace_features(&t);
        let column = |name| rows.iter().map(|r| r[feature(name)]).collect::<Vec<_>>();
        assert_eq!(column("stable_probes"), vec![1.0, 1.0, 2.0]);
        assert_eq!(column("stable_tokens"), vec![32.0, 32.0, 64.0]);
        assert_eq!(column("distinct_answers"), vec![1.0, 2.0, 2.0]);
        assert_eq!(column("answer_changes"), vec![0.0, 1.0, 1.0]);
        assert_eq!(column("question_words"), vec![1.0; 3]);
        assert_eq!(column("prompt_tokens"), vec![20.0; 3]);
        // Token-weighted: (32 * -1.0 + 32 * -0.5) / 64.
        assert_eq!(rows[1][feature("mean_logprob")], -0.75);
        assert!(rows.iter().flatten().all(|x| x.is_finite()));
    }

    #[test]
    fn hedging_probes_are_counted() {
        let mut t = sample();
        t.checkpoints[1].probe_text = "wait, 4".into();
        let rows = trace_features(&t);
        assert_eq!(rows[1][feature("hedging")], 1.0);
        assert_eq!(rows[1][feature("hedge_share")], 0.5);
    }
}
