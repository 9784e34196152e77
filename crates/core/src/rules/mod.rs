//! Stop rules: one serde [`PolicySpec`] describes any rule; [`PolicySpec::start_request`] turns it
//! into a per-request state machine ([`Rule`]) that is fed each [`Checkpoint`] and answers a
//! [`Decision`]. The same state machine runs online (the server feeds it probes as they arrive)
//! and in replay (fed the recorded checkpoints), so the two cannot disagree.
//!
//! Each rule lives in its own module and implements [`RuleSpec`] (validation, label, what it
//! reads, its state) and [`RuleState`] (`needs_probe`, `decide`); a rule *family* with one
//! monotone threshold also implements [`SweepFamily`] (its grid, scores and probe charge) and is
//! then swept, certified and named on command lines as a [`Family`]. The registry at the bottom of
//! this file lists them all: adding a family is one new module (its file and `pub mod` line) and
//! one registry line, and the compiler then demands every trait item, including [`Reads`], which
//! serve's capability checks use to know what an upstream must stream. Help texts and errors take
//! the families' names from the registry ([`Family::usage`]); the property tests iterate it.

use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::features::RequestInfo;
use crate::policy::{Files, PolicyError};
use crate::replay::{ProbeCharge, TraceFacts};
use crate::trace::{Checkpoint, Trace};
use crate::Task;

pub mod budget;
pub mod combine;
pub mod confidence;
pub mod consistency;
pub mod hybrid;
pub mod learned;
pub mod logprob_window;
pub mod never;
pub mod signals;

/// What a rule says after a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Continue,
    /// Stop now and answer with this checkpoint's probed answer.
    Stop,
}

/// What a rule reads beyond the token count. A struct with no default, so that a new rule must
/// state every field: an upstream that does not stream what a rule reads makes it silently never
/// fire, which serve refuses (or degrades) up front.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reads {
    /// The log-probabilities of generated tokens: an upstream must stream them.
    pub token_logprobs: bool,
    /// The probability of the probed answer's tokens: probe answers must carry log-probs.
    pub probe_confidence: bool,
    /// Answers probed at earlier checkpoints: such a rule needs probes even below a hybrid's floor.
    pub answer_history: bool,
}

impl Reads {
    pub const NOTHING: Reads = Reads { token_logprobs: false, probe_confidence: false, answer_history: false };

    /// What either reads.
    pub fn union(self, other: Reads) -> Reads {
        let Reads { token_logprobs, probe_confidence, answer_history } = self;
        Reads {
            token_logprobs: token_logprobs || other.token_logprobs,
            probe_confidence: probe_confidence || other.probe_confidence,
            answer_history: answer_history || other.answer_history,
        }
    }
}

/// A rule's setting, as written in a policy (the fields beside `type`).
pub trait RuleSpec {
    type State: RuleState;
    /// Checks ranges serde cannot.
    fn validate(&self) -> Result<(), PolicyError>;
    /// A short human label, e.g. `consistency(window=2)`.
    fn label(&self) -> String;
    fn reads(&self) -> Reads;
    /// A fresh per-request state.
    fn start(&self, request: RequestInfo) -> Self::State;
}

/// A rule's per-request state; see [`Rule::needs_probe`] and [`Rule::decide`].
pub trait RuleState {
    fn needs_probe(&mut self, checkpoint: &Checkpoint) -> bool;
    /// Whether to stop at this checkpoint.
    fn decide(&mut self, checkpoint: &Checkpoint) -> bool;
}

/// A rule family with one monotone threshold (a higher threshold never stops earlier): its rule
/// stops, for threshold `t`, at the first checkpoint whose score reaches `t`, which is what lets a
/// sweep compute every threshold in one pass. The property tests check every registered family's
/// hooks against its rule's state machine.
pub trait SweepFamily: Sized {
    type Spec: RuleSpec;
    /// What the family's bare name means, and whether it is swept unless told otherwise; `None`
    /// for a family that needs an argument.
    const DEFAULT: Option<Self>;
    /// An example of the argument after `name:` on a command line; empty when it takes none.
    const ARGUMENT: &'static str = "";

    /// The family as named with an argument (`learned:stopper.json`); files are read through
    /// `files`.
    fn with_argument(_argument: &str, _files: &Files) -> Result<Self, PolicyError> {
        Err(PolicyError::Invalid { field: "family".into(), why: "takes no argument".into() })
    }
    /// The concrete rule at one threshold.
    fn spec(&self, threshold: f64) -> Self::Spec;
    /// `n` thresholds, ascending, each exactly representable in the family's spec (so that a
    /// sweep point and a replay of its spec compare the same numbers).
    fn grid(&self, n: usize, probe_interval: u32) -> Vec<f64>;
    /// The probes the family's rule pays for up to its stop (see [`Rule::needs_probe`]).
    fn charge(&self) -> ProbeCharge;
    /// Each checkpoint's score, appended to `out`: the rule stops at the first checkpoint whose
    /// score is at least the threshold.
    fn scores(&self, trace: &Trace, facts: &TraceFacts, out: &mut Vec<f64>);
    /// Calls `each(range, tokens)` for probe tokens paid, beyond [`Self::charge`], by the
    /// thresholds in `range`. Most families pay nothing beyond it.
    fn for_each_extra_probe(
        &self,
        _trace: &Trace,
        _facts: &TraceFacts,
        _scores: &[f64],
        _thresholds: &[f64],
        _each: impl FnMut(Range<usize>, u64),
    ) {
    }
}

pub(crate) fn invalid(field: &str, why: &str) -> Result<(), PolicyError> {
    Err(PolicyError::Invalid { field: field.into(), why: why.into() })
}

/// The `,min=N` part of a label, when there is a minimum.
fn min_opt(min_tokens: u32) -> String {
    if min_tokens == 0 {
        String::new()
    } else {
        format!(",min={min_tokens}")
    }
}

/// Per-request state of a stop rule.
#[derive(Debug, Clone)]
pub struct Rule {
    state: State,
}

impl Rule {
    /// Feeds the next checkpoint (in order, probe fields filled) and says whether to stop there:
    /// [`Self::needs_probe`] then [`Self::decide`], as replay runs it.
    pub fn observe(&mut self, checkpoint: &Checkpoint) -> Decision {
        self.needs_probe(checkpoint);
        self.decide(checkpoint)
    }

    /// Step one at a checkpoint, before any probe: feeds what generation alone tells (tokens so
    /// far, the segment's log-probs) and says whether the probe's answer can matter here. A
    /// budget needs it only at its limit, a log-prob rule only once its window is confident
    /// enough, a consistency or learned rule at every checkpoint (the run of answers is its
    /// signal), a confidence rule from its `min_tokens` on. Online, probe only when this is true;
    /// [`Self::decide`] never stops at a checkpoint where it was false.
    pub fn needs_probe(&mut self, checkpoint: &Checkpoint) -> bool {
        self.state.needs_probe(checkpoint)
    }

    /// Step two: decides with the probed checkpoint, after [`Self::needs_probe`] on the same one.
    /// Where no probe was needed the probe fields may be empty; the decision is then `Continue`.
    pub fn decide(&mut self, checkpoint: &Checkpoint) -> Decision {
        if self.state.decide(checkpoint) {
            Decision::Stop
        } else {
            Decision::Continue
        }
    }
}

impl PolicySpec {
    /// Stopping off.
    pub const NEVER: PolicySpec = PolicySpec::Never(never::Never {});

    /// A fingerprint of the exact setting (16 hex digits of FNV-1a over its JSON): equal
    /// policies share it, any change of rule or threshold changes it. Served responses and
    /// metrics carry it so that a measured outcome can be traced to the setting that caused it.
    pub fn version(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        format!("{:016x}", crate::rng::fnv1a(json))
    }

    /// Whether the rule reads the log-probabilities of generated tokens (a log-prob window, or a
    /// learned stopper's features): an upstream must stream them, or the rule never fires.
    pub fn reads_token_logprobs(&self) -> bool {
        self.reads().token_logprobs
    }

    /// Whether the rule reads the probability of the probed answer's tokens (DEER's confidence, or
    /// a learned stopper's features): probe answers must carry log-probs.
    pub fn reads_probe_confidence(&self) -> bool {
        self.reads().probe_confidence
    }

    /// A fresh per-request state machine for a request known only by its task. A `learned` rule
    /// then sees zeros for the question length and prompt size; prefer [`Self::start_request`].
    pub fn start(&self, task: Task) -> Rule {
        self.start_request(RequestInfo::task_only(task))
    }
}

/// Generates [`PolicySpec`] (one variant per rule, tagged by its name), the per-request state
/// enum, [`Family`] (one variant per swept family) and their dispatch, from the registry lines.
macro_rules! registry {
    (
        families { $($fname:literal => $Fam:ident($fspec:ty, $fsweep:ty),)* }
        others { $($oname:literal => $Other:ident($ospec:ty),)* }
    ) => {
        /// Every stop rule, as written in TOML or JSON (`type = "consistency"`, ...).
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(tag = "type")]
        pub enum PolicySpec {
            $( #[serde(rename = $fname)] $Fam($fspec), )*
            $( #[serde(rename = $oname)] $Other($ospec), )*
        }

        $( impl From<$fspec> for PolicySpec {
            fn from(spec: $fspec) -> Self {
                PolicySpec::$Fam(spec)
            }
        } )*
        $( impl From<$ospec> for PolicySpec {
            fn from(spec: $ospec) -> Self {
                PolicySpec::$Other(spec)
            }
        } )*

        #[derive(Debug, Clone)]
        enum State {
            $( $Fam(<$fspec as RuleSpec>::State), )*
            $( $Other(<$ospec as RuleSpec>::State), )*
        }

        impl PolicySpec {
            /// Every rule's `type`, families first.
            pub const NAMES: &'static [&'static str] = &[$($fname,)* $($oname,)*];

            /// Checks ranges serde cannot.
            pub fn validate(&self) -> Result<(), PolicyError> {
                match self {
                    $( PolicySpec::$Fam(spec) => spec.validate(), )*
                    $( PolicySpec::$Other(spec) => spec.validate(), )*
                }
            }

            /// A short human label, e.g. `consistency(window=2)`.
            pub fn label(&self) -> String {
                match self {
                    $( PolicySpec::$Fam(spec) => spec.label(), )*
                    $( PolicySpec::$Other(spec) => spec.label(), )*
                }
            }

            /// What the rule reads of each checkpoint.
            pub fn reads(&self) -> Reads {
                match self {
                    $( PolicySpec::$Fam(spec) => spec.reads(), )*
                    $( PolicySpec::$Other(spec) => spec.reads(), )*
                }
            }

            /// A fresh per-request state machine for this policy.
            pub fn start_request(&self, request: RequestInfo) -> Rule {
                let state = match self {
                    $( PolicySpec::$Fam(spec) => State::$Fam(spec.start(request)), )*
                    $( PolicySpec::$Other(spec) => State::$Other(spec.start(request)), )*
                };
                Rule { state }
            }
        }

        impl State {
            fn needs_probe(&mut self, checkpoint: &Checkpoint) -> bool {
                match self {
                    $( State::$Fam(state) => state.needs_probe(checkpoint), )*
                    $( State::$Other(state) => state.needs_probe(checkpoint), )*
                }
            }

            fn decide(&mut self, checkpoint: &Checkpoint) -> bool {
                match self {
                    $( State::$Fam(state) => state.decide(checkpoint), )*
                    $( State::$Other(state) => state.decide(checkpoint), )*
                }
            }
        }

        /// A rule family swept over its one threshold.
        #[derive(Debug, Clone, PartialEq, Serialize)]
        #[serde(tag = "family")]
        pub enum Family {
            $( #[serde(rename = $fname)] $Fam($fsweep), )*
        }

        impl Family {
            /// Every family's name, as in its policies' `type`.
            pub const NAMES: &'static [&'static str] = &[$($fname,)*];

            /// The families a sweep covers unless told otherwise.
            pub fn defaults() -> Vec<Family> {
                [$( <$fsweep as SweepFamily>::DEFAULT.map(Family::$Fam), )*].into_iter().flatten().collect()
            }

            /// How each family is named on a command line (`budget`, `learned:stopper.json`),
            /// for help texts and errors.
            pub fn usage() -> String {
                let usage = |name: &str, argument: &str| {
                    if argument.is_empty() { name.to_owned() } else { format!("{name}:{argument}") }
                };
                [$( usage($fname, <$fsweep as SweepFamily>::ARGUMENT), )*].join(", ")
            }

            /// Parses a family as named on a command line: `name` or `name:argument`, the
            /// argument's files read through `files`.
            pub fn parse(text: &str, files: &Files) -> Result<Family, PolicyError> {
                let (name, argument) = text.split_once(':').map_or((text, None), |(n, a)| (n, Some(a)));
                match (name, argument) {
                    $(
                        ($fname, None) => <$fsweep as SweepFamily>::DEFAULT
                            .map(Family::$Fam)
                            .ok_or_else(|| PolicyError::FamilyArgument {
                                name: $fname,
                                example: <$fsweep as SweepFamily>::ARGUMENT,
                            }),
                        ($fname, Some(argument)) => {
                            <$fsweep as SweepFamily>::with_argument(argument, files).map(Family::$Fam)
                        }
                    )*
                    _ => Err(PolicyError::UnknownFamily {
                        name: text.to_owned(),
                        known: Self::usage(),
                        suggestion: crate::policy::Suggestion::closest(name, Self::NAMES),
                    }),
                }
            }

            pub fn name(&self) -> &'static str {
                match self {
                    $( Family::$Fam(_) => $fname, )*
                }
            }

            /// The concrete policy at one threshold of the family.
            pub fn spec(&self, threshold: f64) -> PolicySpec {
                match self {
                    $( Family::$Fam(family) => PolicySpec::$Fam(family.spec(threshold)), )*
                }
            }

            /// `n` thresholds, ascending, each exactly representable in the family's spec (so
            /// that a sweep point and a replay of its spec compare the same numbers).
            pub fn grid(&self, n: usize, probe_interval: u32) -> Vec<f64> {
                let n = n.max(1);
                let mut grid = match self {
                    $( Family::$Fam(family) => family.grid(n, probe_interval), )*
                };
                grid.dedup();
                grid
            }

            /// See [`SweepFamily::charge`].
            pub(crate) fn charge(&self) -> ProbeCharge {
                match self {
                    $( Family::$Fam(family) => family.charge(), )*
                }
            }

            /// See [`SweepFamily::scores`]; `out` is cleared first.
            pub(crate) fn scores(&self, trace: &Trace, facts: &TraceFacts, out: &mut Vec<f64>) {
                out.clear();
                match self {
                    $( Family::$Fam(family) => family.scores(trace, facts, out), )*
                }
            }

            /// See [`SweepFamily::for_each_extra_probe`].
            pub(crate) fn for_each_extra_probe(
                &self,
                trace: &Trace,
                facts: &TraceFacts,
                scores: &[f64],
                thresholds: &[f64],
                each: impl FnMut(Range<usize>, u64),
            ) {
                match self {
                    $( Family::$Fam(family) => family.for_each_extra_probe(trace, facts, scores, thresholds, each), )*
                }
            }
        }
    };
}

// The registry: every rule, by the name policies and command lines use. A family (first list)
// has a threshold to sweep; the others combine rules or switch stopping off.
registry! {
    families {
        "budget" => Budget(budget::Budget, budget::BudgetFamily),
        "consistency" => Consistency(consistency::Consistency, consistency::ConsistencyFamily),
        "confidence" => Confidence(confidence::Confidence, confidence::ConfidenceFamily),
        "logprob_window" => LogprobWindow(logprob_window::LogprobWindow, logprob_window::LogprobWindowFamily),
        "learned" => Learned(learned::Learned, learned::LearnedFamily),
    }
    others {
        "hybrid" => Hybrid(hybrid::Hybrid),
        "any" => Any(combine::Any),
        "all" => All(combine::All),
        "never" => Never(never::Never),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::rules::confidence::Confidence;
    use crate::rules::logprob_window::LogprobWindow;

    pub(crate) fn cp(tokens: u32, answer: &str, mean_prob: f32, logprob: f32) -> Checkpoint {
        Checkpoint {
            tokens,
            answer: answer.into(),
            probe_text: answer.into(),
            answer_tokens: 2,
            mean_prob,
            min_prob: mean_prob,
            segment_logprob: logprob,
            segment_entropy: 1.0,
        }
    }

    fn decisions(spec: &PolicySpec, cps: &[Checkpoint]) -> Vec<Decision> {
        let mut rule = spec.start(Task::Numeric);
        cps.iter().map(|c| rule.observe(c)).collect()
    }

    pub(crate) fn first_stop(spec: &PolicySpec, cps: &[Checkpoint]) -> Option<usize> {
        decisions(spec, cps).iter().position(|d| *d == Decision::Stop)
    }

    pub(crate) fn run_of(answers: &[&str]) -> Vec<Checkpoint> {
        answers.iter().enumerate().map(|(i, a)| cp(32 * (i as u32 + 1), a, 0.5, -1.0)).collect()
    }

    #[test]
    fn rules_say_which_log_probs_they_read() {
        let window = PolicySpec::parse("deepconf-high").unwrap();
        let deer = PolicySpec::parse("deer").unwrap();
        let budget: PolicySpec = budget::Budget { max_tokens: 8 }.into();
        assert!(window.reads_token_logprobs() && !window.reads_probe_confidence());
        assert!(!deer.reads_token_logprobs() && deer.reads_probe_confidence());
        assert!(!budget.reads_token_logprobs() && !budget.reads_probe_confidence());
        let hybrid: PolicySpec = hybrid::Hybrid { floor: 0, cap: 10, rule: Box::new(window.clone()) }.into();
        assert!(hybrid.reads_token_logprobs());
        assert!(PolicySpec::from(combine::Any { rules: vec![budget, deer] }).reads_probe_confidence());
    }

    #[test]
    fn version_tells_settings_apart() {
        let a: PolicySpec = Confidence { threshold: 0.9, min_tokens: 0 }.into();
        assert_eq!(a.version(), a.clone().version());
        assert_eq!(a.version().len(), 16);
        assert_ne!(a.version(), PolicySpec::from(Confidence { threshold: 0.91, min_tokens: 0 }).version());
        assert_ne!(a.version(), PolicySpec::from(budget::Budget { max_tokens: 64 }).version());
    }

    #[test]
    fn confidence_and_logprob_window_thresholds() {
        let cps = vec![cp(32, "3", 0.5, -2.0), cp(64, "", 0.99, -0.01), cp(96, "4", 0.96, -0.1)];
        let confidence = |threshold| Confidence { threshold, min_tokens: 0 }.into();
        assert_eq!(first_stop(&confidence(0.95), &cps), Some(2));
        assert_eq!(first_stop(&confidence(0.4), &cps), Some(0));
        // Window of 64 tokens over segments of 32: means -1.005 at 64, -0.055 at 96.
        let lw = |threshold| LogprobWindow { window: 64, threshold, min_tokens: 0 }.into();
        assert_eq!(first_stop(&lw(-0.06), &cps), Some(2));
        assert_eq!(first_stop(&lw(-0.05), &cps), None);
    }

    #[test]
    fn every_family_round_trips_through_parse_label_and_parse() {
        // A family's default setting (learned needs a model: none in core's unit tests, see the
        // property tests), written as JSON, parsed, labelled, written again.
        for family in Family::defaults() {
            let spec = family.spec(family.grid(4, 32)[1]);
            let json = serde_json::to_string(&spec).unwrap();
            assert!(json.starts_with(&format!("{{\"type\":\"{}\"", family.name())), "{json}");
            let back = PolicySpec::parse(&json).unwrap();
            assert_eq!(back, spec);
            assert_eq!(back.label(), spec.label());
            assert!(spec.label().starts_with(family.name()), "{}", spec.label());
        }
        assert_eq!(Family::NAMES, &PolicySpec::NAMES[..Family::NAMES.len()]);
    }

    #[test]
    fn every_rule_declares_what_it_reads() {
        let reads: Vec<(String, Reads)> = Family::defaults()
            .iter()
            .map(|f| f.spec(f.grid(4, 32)[1]))
            .chain([PolicySpec::NEVER])
            .map(|spec| (spec.label(), spec.reads()))
            .collect();
        let of = |prefix: &str| reads.iter().find(|(label, _)| label.starts_with(prefix)).map(|(_, r)| *r).unwrap();
        let reads = |token_logprobs, probe_confidence, answer_history| Reads {
            token_logprobs,
            probe_confidence,
            answer_history,
        };
        assert_eq!(of("budget"), reads(false, false, false));
        assert_eq!(of("consistency"), reads(false, false, true));
        assert_eq!(of("confidence"), reads(false, true, false));
        assert_eq!(of("logprob_window"), reads(true, false, false));
        assert_eq!(of("never"), Reads::NOTHING);
    }

    #[test]
    fn family_names_and_usage_come_from_the_registry() {
        assert_eq!(Family::NAMES, ["budget", "consistency", "confidence", "logprob_window", "learned"]);
        assert_eq!(Family::usage(), "budget, consistency, confidence, logprob_window, learned:stopper.json");
        let defaults: Vec<&str> = Family::defaults().iter().map(Family::name).collect();
        assert_eq!(defaults, ["budget", "consistency", "confidence", "logprob_window"]);
        let files = Files::none();
        assert_eq!(Family::parse("budget", &files).unwrap(), Family::defaults()[0]);
        let err = Family::parse("learned", &files).unwrap_err().to_string();
        assert!(err.contains("learned:stopper.json"), "{err}");
        let err = Family::parse("budget:3", &files).unwrap_err().to_string();
        assert!(err.contains("no argument"), "{err}");
        let err = Family::parse("nope", &files).unwrap_err().to_string();
        assert!(err.contains("nope") && err.contains("logprob_window"), "{err}");
    }
}
