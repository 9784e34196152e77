//! A trained stopper (`stopwise train`): stop when its score of the checkpoint's features
//! reaches `threshold`. The model is embedded (see [`crate::learned`] for why); a policy file may
//! name it by path, which [`crate::policy`] resolves before the spec is read.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::signals::learned_score;
use super::{invalid, Reads, RuleSpec, RuleState, SweepFamily};
use crate::features::{FeatureState, RequestInfo};
use crate::learned::SharedModel;
use crate::policy::{Files, PolicyError};
use crate::replay::{ProbeCharge, TraceFacts};
use crate::sweep::probability_grid;
use crate::trace::{Checkpoint, Trace};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Learned {
    pub model: SharedModel,
    pub threshold: f32,
}

impl RuleSpec for Learned {
    type State = LearnedState;

    fn validate(&self) -> Result<(), PolicyError> {
        if !(0.0..=1.0).contains(&self.threshold) {
            return invalid("threshold", "must be a probability in [0, 1]");
        }
        self.model.check().map_err(|e| PolicyError::Invalid { field: "model".into(), why: e.to_string() })
    }

    fn label(&self) -> String {
        format!("learned({},{})", self.model.id, self.threshold)
    }

    /// Its features include the token log-probs, the probe's confidence and the run of answers.
    fn reads(&self) -> Reads {
        Reads { token_logprobs: true, probe_confidence: true, answer_history: true }
    }

    fn start(&self, request: RequestInfo) -> LearnedState {
        LearnedState { features: Box::new(FeatureState::new(request)), spec: self.clone() }
    }
}

#[derive(Debug, Clone)]
pub struct LearnedState {
    features: Box<FeatureState>,
    spec: Learned,
}

impl RuleState for LearnedState {
    /// Its features follow the run of answers: every checkpoint's answer matters.
    fn needs_probe(&mut self, _checkpoint: &Checkpoint) -> bool {
        true
    }

    fn decide(&mut self, checkpoint: &Checkpoint) -> bool {
        learned_score(&self.spec.model, &self.features.push(checkpoint), checkpoint) >= f64::from(self.spec.threshold)
    }
}

/// Swept over the trained stopper's probability. Each checkpoint is scored once per trace.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LearnedFamily {
    pub model: SharedModel,
}

impl SweepFamily for LearnedFamily {
    type Spec = Learned;
    /// There is no model to default to.
    const DEFAULT: Option<Self> = None;
    const ARGUMENT: &'static str = "stopper.json";

    fn with_argument(argument: &str, files: &Files) -> Result<Self, PolicyError> {
        files.model(Path::new(argument)).map(|model| LearnedFamily { model })
    }

    fn spec(&self, threshold: f64) -> Learned {
        Learned { model: self.model.clone(), threshold: threshold as f32 }
    }

    fn grid(&self, n: usize, _probe_interval: u32) -> Vec<f64> {
        probability_grid(n)
    }

    fn charge(&self) -> ProbeCharge {
        ProbeCharge::Every
    }

    fn scores(&self, trace: &Trace, _facts: &TraceFacts, out: &mut Vec<f64>) {
        let mut features = FeatureState::new(RequestInfo::of(trace));
        out.extend(trace.checkpoints.iter().map(|c| learned_score(&self.model, &features.push(c), c)));
    }
}
