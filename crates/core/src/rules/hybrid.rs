//! Static floor and cap around a dynamic rule: never stop before `floor` tokens, always stop at
//! `cap` tokens, otherwise as `rule` says.

use serde::{Deserialize, Serialize};

use super::{invalid, PolicySpec, Reads, Rule, RuleSpec, RuleState};
use crate::features::RequestInfo;
use crate::policy::PolicyError;
use crate::rules::Decision;
use crate::trace::Checkpoint;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hybrid {
    pub floor: u32,
    pub cap: u32,
    pub rule: Box<PolicySpec>,
}

impl RuleSpec for Hybrid {
    type State = HybridState;

    fn validate(&self) -> Result<(), PolicyError> {
        if self.floor > self.cap {
            return invalid("floor", "must not exceed cap");
        }
        self.rule.validate()
    }

    fn label(&self) -> String {
        format!("hybrid({},{},{})", self.floor, self.cap, self.rule.label())
    }

    fn reads(&self) -> Reads {
        self.rule.reads()
    }

    fn start(&self, request: RequestInfo) -> HybridState {
        HybridState {
            floor: self.floor,
            cap: self.cap,
            learns_from_history: self.rule.reads().answer_history,
            inner: Box::new(self.rule.start_request(request)),
        }
    }
}

#[derive(Debug, Clone)]
pub struct HybridState {
    floor: u32,
    cap: u32,
    /// Below the floor only a rule that learns from earlier answers needs them.
    learns_from_history: bool,
    inner: Box<Rule>,
}

impl RuleState for HybridState {
    fn needs_probe(&mut self, checkpoint: &Checkpoint) -> bool {
        let inner_needs = self.inner.needs_probe(checkpoint);
        checkpoint.tokens >= self.cap || (inner_needs && (self.learns_from_history || checkpoint.tokens >= self.floor))
    }

    fn decide(&mut self, checkpoint: &Checkpoint) -> bool {
        // The inner rule sees every checkpoint, so its state (e.g. a run of equal answers) is
        // built up before the floor is reached.
        let inner_stops = self.inner.decide(checkpoint) == Decision::Stop;
        checkpoint.tokens >= self.cap || (checkpoint.tokens >= self.floor && inner_stops)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::consistency::Consistency;
    use crate::rules::tests::{first_stop, run_of};

    #[test]
    fn hybrid_floor_and_cap() {
        let inner: PolicySpec = Consistency { window: 2, min_tokens: 0, hedge_filter: false }.into();
        let hybrid = |floor, cap| Hybrid { floor, cap, rule: Box::new(inner.clone()) }.into();
        let cps = run_of(&["7", "7", "8", "9", "10", "11"]);
        assert_eq!(first_stop(&hybrid(0, 1000), &cps), Some(1));
        assert_eq!(first_stop(&hybrid(96, 1000), &cps), None, "the run ended before the floor");
        assert_eq!(first_stop(&hybrid(64, 1000), &cps), Some(1));
        assert_eq!(first_stop(&hybrid(96, 160), &cps), Some(4));
    }
}
