//! Static budget: stop (and force the answer) once `max_tokens` tokens were generated.

use serde::{Deserialize, Serialize};

use super::{invalid, Reads, RuleSpec, RuleState, SweepFamily};
use crate::features::RequestInfo;
use crate::policy::PolicyError;
use crate::replay::{ProbeCharge, TraceFacts};
use crate::trace::{Checkpoint, Trace};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    pub max_tokens: u32,
}

impl RuleSpec for Budget {
    type State = Budget;

    fn validate(&self) -> Result<(), PolicyError> {
        if self.max_tokens == 0 {
            return invalid("max_tokens", "must be at least 1");
        }
        Ok(())
    }

    fn label(&self) -> String {
        format!("budget({})", self.max_tokens)
    }

    fn reads(&self) -> Reads {
        Reads { token_logprobs: false, probe_confidence: false, answer_history: false }
    }

    fn start(&self, _request: RequestInfo) -> Budget {
        self.clone()
    }
}

impl RuleState for Budget {
    /// The answer matters only where the budget is spent.
    fn needs_probe(&mut self, checkpoint: &Checkpoint) -> bool {
        checkpoint.tokens >= self.max_tokens
    }

    fn decide(&mut self, checkpoint: &Checkpoint) -> bool {
        checkpoint.tokens >= self.max_tokens
    }
}

/// Swept over the token budget.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BudgetFamily {}

impl SweepFamily for BudgetFamily {
    type Spec = Budget;
    const DEFAULT: Option<Self> = Some(BudgetFamily {});

    fn spec(&self, threshold: f64) -> Budget {
        Budget { max_tokens: threshold as u32 }
    }

    fn grid(&self, n: usize, probe_interval: u32) -> Vec<f64> {
        (1..=n as u32).map(|k| f64::from(k * probe_interval.max(1))).collect()
    }

    fn charge(&self) -> ProbeCharge {
        ProbeCharge::StopOnly
    }

    fn scores(&self, trace: &Trace, _facts: &TraceFacts, out: &mut Vec<f64>) {
        out.extend(trace.checkpoints.iter().map(|c| f64::from(c.tokens)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::tests::{first_stop, run_of};

    #[test]
    fn budget_stops_at_the_first_checkpoint_reaching_it() {
        let cps = run_of(&["1", "2", "3", "4"]);
        let budget = |max_tokens| Budget { max_tokens }.into();
        assert_eq!(first_stop(&budget(64), &cps), Some(1));
        assert_eq!(first_stop(&budget(65), &cps), Some(2));
        assert_eq!(first_stop(&budget(1000), &cps), None);
    }
}
