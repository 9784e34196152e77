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

    /// Multiples of the probe interval; the grid ends before a multiple would overflow a token
    /// count (a wrapped multiple used to put `budget(0)` on the grid, and calibrate certified it).
    fn grid(&self, n: usize, probe_interval: u32) -> Vec<f64> {
        let interval = probe_interval.max(1);
        (1..=u32::try_from(n).unwrap_or(u32::MAX)).map_while(|k| k.checked_mul(interval)).map(f64::from).collect()
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

    #[test]
    fn the_grid_never_wraps_around_to_a_zero_budget() {
        let grid = BudgetFamily {}.grid(64, 1 << 27);
        assert!(!grid.is_empty() && grid.len() < 64, "{}", grid.len());
        assert!(grid.windows(2).all(|w| w[0] < w[1]) && grid[0] > 0.0, "{grid:?}");
        assert_eq!(BudgetFamily {}.grid(4, 32), [32.0, 64.0, 96.0, 128.0]);
    }
}
