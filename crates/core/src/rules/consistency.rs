//! Dynasor-CoT: stop when the last `window` probed answers are equal and non-empty.

use serde::{Deserialize, Serialize};

use super::signals::{consistency_key, next_run};
use super::{invalid, min_opt, Reads, RuleSpec, RuleState, SweepFamily};
use crate::answer::Task;
use crate::features::RequestInfo;
use crate::policy::PolicyError;
use crate::replay::{ProbeCharge, TraceFacts};
use crate::trace::{Checkpoint, Trace};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Consistency {
    pub window: u32,
    #[serde(default)]
    pub min_tokens: u32,
    /// Discard probes whose text hedges ("wait", "hmm", ...), as Dynasor-CoT does.
    #[serde(default)]
    pub hedge_filter: bool,
}

impl RuleSpec for Consistency {
    type State = ConsistencyState;

    fn validate(&self) -> Result<(), PolicyError> {
        if self.window == 0 {
            return invalid("window", "must be at least 1");
        }
        Ok(())
    }

    fn label(&self) -> String {
        let hedge = if self.hedge_filter { ",hedge" } else { "" };
        format!("consistency(window={}{}{hedge})", self.window, min_opt(self.min_tokens))
    }

    fn reads(&self) -> Reads {
        Reads { token_logprobs: false, probe_confidence: false, answer_history: true }
    }

    fn start(&self, request: RequestInfo) -> ConsistencyState {
        ConsistencyState { spec: self.clone(), task: request.task, last: None, run: 0 }
    }
}

#[derive(Debug, Clone)]
pub struct ConsistencyState {
    spec: Consistency,
    /// How answers are normalised before they are compared.
    task: Task,
    last: Option<String>,
    run: u32,
}

impl RuleState for ConsistencyState {
    /// The run of answers is the signal: every checkpoint's answer matters.
    fn needs_probe(&mut self, _checkpoint: &Checkpoint) -> bool {
        true
    }

    fn decide(&mut self, checkpoint: &Checkpoint) -> bool {
        let answer = consistency_key(self.task, checkpoint, self.spec.hedge_filter);
        self.run = next_run(self.last.as_deref(), answer.as_deref(), self.run);
        self.last = answer;
        checkpoint.tokens >= self.spec.min_tokens && self.run >= self.spec.window
    }
}

/// Swept over the window (equal answers in a row).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConsistencyFamily {
    pub hedge_filter: bool,
}

impl SweepFamily for ConsistencyFamily {
    type Spec = Consistency;
    const DEFAULT: Option<Self> = Some(ConsistencyFamily { hedge_filter: true });

    fn spec(&self, threshold: f64) -> Consistency {
        Consistency { window: threshold as u32, min_tokens: 0, hedge_filter: self.hedge_filter }
    }

    fn grid(&self, n: usize, _probe_interval: u32) -> Vec<f64> {
        (1..=n as u32).map(f64::from).collect()
    }

    fn charge(&self) -> ProbeCharge {
        ProbeCharge::Every
    }

    fn scores(&self, _trace: &Trace, facts: &TraceFacts, out: &mut Vec<f64>) {
        // The same run counting as the rule's state machine (`next_run`), on interned ids.
        let mut last = 0;
        let mut run = 0;
        for c in &facts.checkpoints {
            let id = if self.hedge_filter && c.hedging { 0 } else { c.answer_id };
            run = match id {
                0 => 0,
                _ if id == last => run + 1,
                _ => 1,
            };
            last = id;
            out.push(f64::from(run));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::tests::{first_stop, run_of};

    #[test]
    fn consistency_needs_window_equal_non_empty_answers() {
        let spec = |window| Consistency { window, min_tokens: 0, hedge_filter: false }.into();
        let cps = run_of(&["5", "", "", "7", "7", "7"]);
        assert_eq!(first_stop(&spec(1), &cps), Some(0));
        assert_eq!(first_stop(&spec(2), &cps), Some(4), "empty answers never agree");
        assert_eq!(first_stop(&spec(3), &cps), Some(5));
        assert_eq!(first_stop(&spec(4), &cps), None);
        // Numerically equal answers agree after normalisation.
        let cps = run_of(&["1,000", "1000"]);
        assert_eq!(first_stop(&spec(2), &cps), Some(1));
    }

    #[test]
    fn consistency_min_tokens_delays_the_stop() {
        let spec = Consistency { window: 2, min_tokens: 150, hedge_filter: false }.into();
        assert_eq!(first_stop(&spec, &run_of(&["7", "7", "7", "7", "7"])), Some(4));
    }
}
