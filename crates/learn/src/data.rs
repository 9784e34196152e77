//! Training rows: each trace reduced once to its checkpoints' feature vectors and the facts that
//! labels and the tokens-saved curve need. Rows stay grouped by trace, so that splits and folds
//! never put checkpoints of one trace on both sides.

use std::str::FromStr;

use serde::{Deserialize, Serialize};
use stopwise_core::features::{trace_features, Features};
use stopwise_core::replay::TraceFacts;
use stopwise_core::trace::Trace;

/// What the stopper learns to predict at a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Label {
    /// The probed answer equals the full run's answer (needs no gold; the main head).
    Agree,
    /// The probed answer is correct (EM against gold); traces without gold are left out.
    Correct,
}

impl Label {
    pub fn name(self) -> &'static str {
        match self {
            Label::Agree => "agree",
            Label::Correct => "correct",
        }
    }
}

impl FromStr for Label {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "agree" => Ok(Label::Agree),
            "correct" => Ok(Label::Correct),
            _ => Err(format!("unknown label `{s}`; labels are: agree, correct")),
        }
    }
}

/// One trace, ready for training and evaluation.
#[derive(Debug, Clone)]
pub struct TraceRows {
    pub id: String,
    pub facts: TraceFacts,
    pub features: Vec<Features>,
    /// Checkpoints with a non-empty probed answer: the only ones a learned rule may stop at, so
    /// the only ones trained on.
    pub answered: Vec<bool>,
}

impl TraceRows {
    pub fn of(trace: &Trace) -> Self {
        TraceRows {
            id: trace.id.clone(),
            facts: TraceFacts::of(trace),
            features: trace_features(trace),
            answered: trace.checkpoints.iter().map(|c| !c.answer.is_empty()).collect(),
        }
    }

    /// `(features, label)` of every answered checkpoint; `None` when the label needs gold and
    /// the trace has none.
    pub fn examples(&self, label: Label) -> Option<Vec<(Features, bool)>> {
        if label == Label::Correct && !self.facts.has_gold {
            return None;
        }
        let examples = self
            .features
            .iter()
            .zip(&self.facts.checkpoints)
            .zip(&self.answered)
            .filter(|(_, &answered)| answered)
            .map(|((x, c), _)| (*x, if label == Label::Agree { c.agree } else { c.em }))
            .collect();
        Some(examples)
    }
}
