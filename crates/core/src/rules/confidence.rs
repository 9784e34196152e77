//! DEER: stop when the probe's mean token probability reaches `threshold`.

use serde::{Deserialize, Serialize};

use super::signals::confidence_score;
use super::{invalid, min_opt, Reads, RuleSpec, RuleState, SweepFamily};
use crate::features::RequestInfo;
use crate::policy::PolicyError;
use crate::replay::{ProbeCharge, TraceFacts};
use crate::trace::{Checkpoint, Trace};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Confidence {
    pub threshold: f32,
    #[serde(default)]
    pub min_tokens: u32,
}

impl RuleSpec for Confidence {
    type State = Confidence;

    fn validate(&self) -> Result<(), PolicyError> {
        if !(0.0..=1.0).contains(&self.threshold) {
            return invalid("threshold", "must be a probability in [0, 1]");
        }
        Ok(())
    }

    fn label(&self) -> String {
        format!("confidence({}{})", self.threshold, min_opt(self.min_tokens))
    }

    fn reads(&self) -> Reads {
        Reads { token_logprobs: false, probe_confidence: true, answer_history: false }
    }

    fn start(&self, _request: RequestInfo) -> Confidence {
        self.clone()
    }
}

impl RuleState for Confidence {
    /// Any probe from `min_tokens` on may be confident enough.
    fn needs_probe(&mut self, checkpoint: &Checkpoint) -> bool {
        checkpoint.tokens >= self.min_tokens
    }

    fn decide(&mut self, checkpoint: &Checkpoint) -> bool {
        checkpoint.tokens >= self.min_tokens && confidence_score(checkpoint) >= self.threshold
    }
}

/// Swept over the trial answer's mean probability.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConfidenceFamily {}

impl SweepFamily for ConfidenceFamily {
    type Spec = Confidence;
    const DEFAULT: Option<Self> = Some(ConfidenceFamily {});

    fn spec(&self, threshold: f64) -> Confidence {
        Confidence { threshold: threshold as f32, min_tokens: 0 }
    }

    fn grid(&self, n: usize, _probe_interval: u32) -> Vec<f64> {
        (0..n).map(|k| f64::from((k as f64 / (n.max(2) - 1) as f64) as f32)).collect()
    }

    fn charge(&self) -> ProbeCharge {
        ProbeCharge::Every
    }

    fn scores(&self, trace: &Trace, _facts: &TraceFacts, out: &mut Vec<f64>) {
        out.extend(trace.checkpoints.iter().map(|c| f64::from(confidence_score(c))));
    }
}
