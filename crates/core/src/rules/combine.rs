//! Rules combined: `any` stops as soon as one of its rules says stop, `all` only when every one
//! says stop at the same checkpoint.

use serde::{Deserialize, Serialize};

use super::{invalid, PolicySpec, Reads, Rule, RuleSpec, RuleState};
use crate::features::RequestInfo;
use crate::policy::PolicyError;
use crate::rules::Decision;
use crate::trace::Checkpoint;

/// Stop as soon as any of the rules says stop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Any {
    pub rules: Vec<PolicySpec>,
}

/// Stop only when every rule says stop at the same checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct All {
    pub rules: Vec<PolicySpec>,
}

impl RuleSpec for Any {
    type State = Members;

    fn validate(&self) -> Result<(), PolicyError> {
        validate(&self.rules)
    }

    fn label(&self) -> String {
        label("any", &self.rules)
    }

    fn reads(&self) -> Reads {
        reads(&self.rules)
    }

    fn start(&self, request: RequestInfo) -> Members {
        Members::start(&self.rules, request, false)
    }
}

impl RuleSpec for All {
    type State = Members;

    fn validate(&self) -> Result<(), PolicyError> {
        validate(&self.rules)
    }

    fn label(&self) -> String {
        label("all", &self.rules)
    }

    fn reads(&self) -> Reads {
        reads(&self.rules)
    }

    fn start(&self, request: RequestInfo) -> Members {
        Members::start(&self.rules, request, true)
    }
}

fn validate(rules: &[PolicySpec]) -> Result<(), PolicyError> {
    if rules.is_empty() {
        return invalid("rules", "must name at least one rule");
    }
    rules.iter().try_for_each(PolicySpec::validate)
}

fn label(name: &str, rules: &[PolicySpec]) -> String {
    format!("{name}({})", rules.iter().map(PolicySpec::label).collect::<Vec<_>>().join(","))
}

/// What any member reads, the combination reads.
fn reads(rules: &[PolicySpec]) -> Reads {
    rules.iter().fold(Reads::NOTHING, |reads, rule| reads.union(rule.reads()))
}

/// The members' states; `all` says whether every member must stop, or one is enough.
#[derive(Debug, Clone)]
pub struct Members {
    rules: Vec<Rule>,
    all: bool,
}

impl Members {
    fn start(rules: &[PolicySpec], request: RequestInfo, all: bool) -> Self {
        Members { rules: rules.iter().map(|r| r.start_request(request)).collect(), all }
    }
}

impl RuleState for Members {
    // Every member sees every checkpoint (no short circuit), so each one's state stays current.
    fn needs_probe(&mut self, checkpoint: &Checkpoint) -> bool {
        self.rules.iter_mut().fold(false, |needs, r| r.needs_probe(checkpoint) | needs)
    }

    fn decide(&mut self, checkpoint: &Checkpoint) -> bool {
        let stops = self.rules.iter_mut().map(|r| r.decide(checkpoint) == Decision::Stop);
        if self.all {
            stops.fold(true, |all, stop| stop & all)
        } else {
            stops.fold(false, |any, stop| stop | any)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::budget::Budget;
    use crate::rules::consistency::Consistency;
    use crate::rules::tests::{first_stop, run_of};

    #[test]
    fn any_and_all_combine_children() {
        let cps = run_of(&["7", "7", "7", "7"]);
        let budget: PolicySpec = Budget { max_tokens: 96 }.into();
        let cons: PolicySpec = Consistency { window: 2, min_tokens: 0, hedge_filter: false }.into();
        assert_eq!(first_stop(&Any { rules: vec![budget.clone(), cons.clone()] }.into(), &cps), Some(1));
        assert_eq!(first_stop(&All { rules: vec![budget, cons] }.into(), &cps), Some(2));
    }
}
