//! DeepConf-style: stop when the mean log-probability of the last `window` generated tokens
//! reaches `threshold` (a confident stretch of reasoning).

use std::ops::Range;

use serde::{Deserialize, Serialize};

use super::signals::LogprobMean;
use super::{invalid, min_opt, Reads, RuleSpec, RuleState, SweepFamily};
use crate::features::RequestInfo;
use crate::policy::PolicyError;
use crate::replay::{ProbeCharge, TraceFacts};
use crate::trace::{Checkpoint, Trace};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogprobWindow {
    pub window: u32,
    pub threshold: f32,
    #[serde(default)]
    pub min_tokens: u32,
}

impl RuleSpec for LogprobWindow {
    type State = LogprobWindowState;

    fn validate(&self) -> Result<(), PolicyError> {
        if self.window == 0 {
            return invalid("window", "must be at least 1 token");
        }
        if self.threshold.is_nan() || self.threshold > 0.0 {
            return invalid("threshold", "must be a log-probability (<= 0)");
        }
        Ok(())
    }

    fn label(&self) -> String {
        format!("logprob_window({},{}{})", self.window, self.threshold, min_opt(self.min_tokens))
    }

    fn reads(&self) -> Reads {
        Reads { token_logprobs: true, probe_confidence: false, answer_history: false }
    }

    fn start(&self, _request: RequestInfo) -> LogprobWindowState {
        LogprobWindowState { mean: LogprobMean::new(self.window), spec: self.clone(), ready: false }
    }
}

#[derive(Debug, Clone)]
pub struct LogprobWindowState {
    spec: LogprobWindow,
    mean: LogprobMean,
    /// The window was confident enough at the current checkpoint.
    ready: bool,
}

impl RuleState for LogprobWindowState {
    /// The answer matters only once the window is confident enough.
    fn needs_probe(&mut self, checkpoint: &Checkpoint) -> bool {
        let mean = self.mean.push(checkpoint);
        self.ready = checkpoint.tokens >= self.spec.min_tokens && mean >= f64::from(self.spec.threshold);
        self.ready
    }

    fn decide(&mut self, checkpoint: &Checkpoint) -> bool {
        self.ready && !checkpoint.answer.is_empty()
    }
}

/// Swept over the window mean log-probability, for a fixed window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LogprobWindowFamily {
    pub window: u32,
}

impl SweepFamily for LogprobWindowFamily {
    type Spec = LogprobWindow;
    const DEFAULT: Option<Self> = Some(LogprobWindowFamily { window: 128 });

    fn spec(&self, threshold: f64) -> LogprobWindow {
        LogprobWindow { window: self.window, threshold: threshold as f32, min_tokens: 0 }
    }

    /// Log-probabilities from -5 to -0.005 on a log scale: fine steps where confident text lives.
    fn grid(&self, n: usize, _probe_interval: u32) -> Vec<f64> {
        (0..n)
            .map(|k| {
                let x = (5f64.ln() + (0.005f64.ln() - 5f64.ln()) * k as f64 / (n.max(2) - 1) as f64).exp();
                f64::from(-(x as f32))
            })
            .collect()
    }

    /// Only the stop pays as such; the probes of confident stretches whose answer came back empty
    /// are [`Self::for_each_extra_probe`].
    fn charge(&self) -> ProbeCharge {
        ProbeCharge::StopOnly
    }

    fn scores(&self, trace: &Trace, _facts: &TraceFacts, out: &mut Vec<f64>) {
        let mut w = LogprobMean::new(self.window);
        out.extend(trace.checkpoints.iter().map(|c| {
            let mean = w.push(c);
            if c.answer.is_empty() {
                f64::NEG_INFINITY
            } else {
                mean
            }
        }));
    }

    /// The rule probes wherever its window is confident enough and goes on when the answer comes
    /// back empty: threshold `t` pays for checkpoint `j` when `mean_j >= t` and no earlier
    /// checkpoint's score reached `t`.
    fn for_each_extra_probe(
        &self,
        trace: &Trace,
        facts: &TraceFacts,
        scores: &[f64],
        thresholds: &[f64],
        mut each: impl FnMut(Range<usize>, u64),
    ) {
        let mut w = LogprobMean::new(self.window);
        let mut best = f64::NEG_INFINITY;
        for ((c, fact), &score) in trace.checkpoints.iter().zip(&facts.checkpoints).zip(scores) {
            let mean = w.push(c);
            if c.answer.is_empty() && mean > best {
                let paying = thresholds.partition_point(|&t| t <= best)..thresholds.partition_point(|&t| t <= mean);
                if !paying.is_empty() {
                    each(paying, u64::from(fact.probe_tokens));
                }
            }
            best = best.max(score);
        }
    }
}
