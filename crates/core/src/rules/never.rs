//! Never stop early (full runs; also how a client disables stopping).

use serde::{Deserialize, Serialize};

use super::{Reads, RuleSpec, RuleState};
use crate::features::RequestInfo;
use crate::policy::PolicyError;
use crate::trace::Checkpoint;

/// Braced (not a unit struct) so that it reads and writes as `{"type": "never"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Never {}

impl RuleSpec for Never {
    type State = Never;

    fn validate(&self) -> Result<(), PolicyError> {
        Ok(())
    }

    fn label(&self) -> String {
        "never".into()
    }

    fn reads(&self) -> Reads {
        Reads::NOTHING
    }

    fn start(&self, _request: RequestInfo) -> Never {
        Never {}
    }
}

impl RuleState for Never {
    fn needs_probe(&mut self, _checkpoint: &Checkpoint) -> bool {
        false
    }

    fn decide(&mut self, _checkpoint: &Checkpoint) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use crate::rules::tests::{first_stop, run_of};
    use crate::rules::PolicySpec;

    #[test]
    fn never_never_stops() {
        assert_eq!(first_stop(&PolicySpec::NEVER, &run_of(&["1", "1", "1"])), None);
    }
}
