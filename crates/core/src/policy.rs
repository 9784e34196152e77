//! Stop rules: one serde [`PolicySpec`] describes any rule; [`PolicySpec::start`] turns it into a
//! per-request state machine ([`Rule`]) that is fed each [`Checkpoint`] and answers a [`Decision`].
//!
//! The same state machine runs online (the server feeds it probes as they arrive) and in replay
//! (fed the recorded checkpoints), so the two cannot disagree.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::answer::{self, Task};
use crate::features::{FeatureState, RequestInfo};
use crate::learned::SharedModel;
use crate::trace::Checkpoint;

/// Every stop rule, as written in TOML or JSON (`type = "consistency"`, ...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum PolicySpec {
    /// Static budget: stop (and force the answer) once `max_tokens` tokens were generated.
    Budget { max_tokens: u32 },
    /// Dynasor-CoT: stop when the last `window` probed answers are equal and non-empty.
    Consistency {
        window: u32,
        #[serde(default)]
        min_tokens: u32,
        /// Discard probes whose text hedges ("wait", "hmm", ...), as Dynasor-CoT does.
        #[serde(default)]
        hedge_filter: bool,
    },
    /// DEER: stop when the probe's mean token probability reaches `threshold`.
    Confidence {
        threshold: f32,
        #[serde(default)]
        min_tokens: u32,
    },
    /// DeepConf-style: stop when the mean log-probability of the last `window` generated tokens
    /// reaches `threshold` (a confident stretch of reasoning).
    LogprobWindow {
        window: u32,
        threshold: f32,
        #[serde(default)]
        min_tokens: u32,
    },
    /// A trained stopper (`stopwise train`): stop when its score of the checkpoint's features
    /// reaches `threshold`. The model is embedded (see [`crate::learned`] for why).
    Learned { model: SharedModel, threshold: f32 },
    /// Static floor and cap around a dynamic rule: never stop before `floor` tokens, always stop
    /// at `cap` tokens, otherwise as `rule` says.
    Hybrid { floor: u32, cap: u32, rule: Box<PolicySpec> },
    /// Stop as soon as any of the rules says stop.
    Any { rules: Vec<PolicySpec> },
    /// Stop only when every rule says stop at the same checkpoint.
    All { rules: Vec<PolicySpec> },
    /// Never stop early (full runs; also how a client disables stopping).
    Never,
}

/// What a rule says after a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Continue,
    /// Stop now and answer with this checkpoint's probed answer.
    Stop,
}

/// Published presets, by name: `(name, spec, where it comes from)`.
pub fn presets() -> Vec<(&'static str, PolicySpec, &'static str)> {
    let consistency = |window| PolicySpec::Consistency { window, min_tokens: 0, hedge_filter: true };
    vec![
        ("dynasor-cot", consistency(2), "Dynasor-CoT: probe every 32 tokens, stop after 2 equal confident answers"),
        ("dynasor-cot-w3", consistency(3), "Dynasor-CoT, milder: 3 equal answers in a row"),
        ("dynasor-cot-w4", consistency(4), "Dynasor-CoT, mildest: 4 equal answers in a row"),
        (
            "deer",
            PolicySpec::Confidence { threshold: 0.95, min_tokens: 0 },
            "DEER: trial answer mean probability >= 0.95",
        ),
        (
            "deepconf-low",
            PolicySpec::LogprobWindow { window: 128, threshold: -0.35, min_tokens: 0 },
            "DeepConf-low adapted to stopping: aggressive, 128-token window mean log-prob >= -0.35",
        ),
        (
            "deepconf-high",
            PolicySpec::LogprobWindow { window: 128, threshold: -0.15, min_tokens: 0 },
            "DeepConf-high adapted to stopping: conservative, 128-token window mean log-prob >= -0.15",
        ),
    ]
}

/// Why a policy could not be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PolicyError {
    #[error("unknown preset `{name}`; presets are: {known}")]
    UnknownPreset { name: String, known: String },
    #[error("policy is not valid JSON or TOML: {0}")]
    Syntax(String),
    #[error("field `{field}`: {why}")]
    Invalid { field: String, why: String },
}

impl PolicySpec {
    /// Reads a preset name, a JSON object or a TOML table.
    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        let text = text.trim();
        let spec: PolicySpec = if text.starts_with('{') {
            let de = &mut serde_json::Deserializer::from_str(text);
            serde_path_to_error::deserialize(de).map_err(|e| PolicyError::Syntax(e.to_string()))?
        } else if text.contains('=') {
            toml_like(text)?
        } else {
            return presets().into_iter().find(|(name, _, _)| *name == text).map(|(_, spec, _)| spec).ok_or_else(
                || PolicyError::UnknownPreset {
                    name: text.to_owned(),
                    known: presets().iter().map(|p| p.0).collect::<Vec<_>>().join(", "),
                },
            );
        };
        spec.validate()?;
        Ok(spec)
    }

    /// Checks ranges serde cannot.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let invalid = |field: &str, why: &str| Err(PolicyError::Invalid { field: field.into(), why: why.into() });
        match self {
            PolicySpec::Budget { max_tokens: 0 } => invalid("max_tokens", "must be at least 1"),
            PolicySpec::Consistency { window: 0, .. } => invalid("window", "must be at least 1"),
            PolicySpec::Confidence { threshold, .. } if !(0.0..=1.0).contains(threshold) => {
                invalid("threshold", "must be a probability in [0, 1]")
            }
            PolicySpec::LogprobWindow { window: 0, .. } => invalid("window", "must be at least 1 token"),
            PolicySpec::LogprobWindow { threshold, .. } if threshold.is_nan() || *threshold > 0.0 => {
                invalid("threshold", "must be a log-probability (<= 0)")
            }
            PolicySpec::Learned { threshold, .. } if !(0.0..=1.0).contains(threshold) => {
                invalid("threshold", "must be a probability in [0, 1]")
            }
            PolicySpec::Learned { model, .. } => {
                model.check().map_err(|e| PolicyError::Invalid { field: "model".into(), why: e.to_string() })
            }
            PolicySpec::Hybrid { floor, cap, rule } => {
                if floor > cap {
                    return invalid("floor", "must not exceed cap");
                }
                rule.validate()
            }
            PolicySpec::Any { rules } | PolicySpec::All { rules } => {
                if rules.is_empty() {
                    return invalid("rules", "must name at least one rule");
                }
                rules.iter().try_for_each(PolicySpec::validate)
            }
            _ => Ok(()),
        }
    }

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
        match self {
            PolicySpec::LogprobWindow { .. } | PolicySpec::Learned { .. } => true,
            PolicySpec::Hybrid { rule, .. } => rule.reads_token_logprobs(),
            PolicySpec::Any { rules } | PolicySpec::All { rules } => rules.iter().any(PolicySpec::reads_token_logprobs),
            _ => false,
        }
    }

    /// Whether the rule reads the probability of the probed answer's tokens (DEER's confidence, or
    /// a learned stopper's features): probe answers must carry log-probs.
    pub fn reads_probe_confidence(&self) -> bool {
        match self {
            PolicySpec::Confidence { .. } | PolicySpec::Learned { .. } => true,
            PolicySpec::Hybrid { rule, .. } => rule.reads_probe_confidence(),
            PolicySpec::Any { rules } | PolicySpec::All { rules } => {
                rules.iter().any(PolicySpec::reads_probe_confidence)
            }
            _ => false,
        }
    }

    /// A short human label, e.g. `consistency(window=2)`.
    pub fn label(&self) -> String {
        match self {
            PolicySpec::Budget { max_tokens } => format!("budget({max_tokens})"),
            PolicySpec::Consistency { window, min_tokens, hedge_filter } => {
                format!(
                    "consistency(window={window}{}{})",
                    min_opt(*min_tokens),
                    if *hedge_filter { ",hedge" } else { "" }
                )
            }
            PolicySpec::Confidence { threshold, min_tokens } => {
                format!("confidence({threshold}{})", min_opt(*min_tokens))
            }
            PolicySpec::LogprobWindow { window, threshold, min_tokens } => {
                format!("logprob_window({window},{threshold}{})", min_opt(*min_tokens))
            }
            PolicySpec::Learned { model, threshold } => format!("learned({},{threshold})", model.id),
            PolicySpec::Hybrid { floor, cap, rule } => format!("hybrid({floor},{cap},{})", rule.label()),
            PolicySpec::Any { rules } => {
                format!("any({})", rules.iter().map(PolicySpec::label).collect::<Vec<_>>().join(","))
            }
            PolicySpec::All { rules } => {
                format!("all({})", rules.iter().map(PolicySpec::label).collect::<Vec<_>>().join(","))
            }
            PolicySpec::Never => "never".into(),
        }
    }

    /// A fresh per-request state machine for a request known only by its task. A `learned` rule
    /// then sees zeros for the question length and prompt size; prefer [`Self::start_request`].
    pub fn start(&self, task: Task) -> Rule {
        self.start_request(RequestInfo::task_only(task))
    }

    /// A fresh per-request state machine for this policy.
    pub fn start_request(&self, request: RequestInfo) -> Rule {
        let task = request.task;
        let state = match self {
            PolicySpec::Budget { max_tokens } => State::Budget { max_tokens: *max_tokens },
            PolicySpec::Consistency { window, min_tokens, hedge_filter } => State::Consistency {
                window: *window,
                min_tokens: *min_tokens,
                hedge_filter: *hedge_filter,
                last: None,
                run: 0,
            },
            PolicySpec::Confidence { threshold, min_tokens } => {
                State::Confidence { threshold: *threshold, min_tokens: *min_tokens }
            }
            PolicySpec::LogprobWindow { window, threshold, min_tokens } => State::LogprobWindow {
                window: LogprobWindow::new(*window),
                threshold: *threshold,
                min_tokens: *min_tokens,
                ready: false,
            },
            PolicySpec::Learned { model, threshold } => State::Learned {
                features: Box::new(FeatureState::new(request)),
                model: model.clone(),
                threshold: *threshold,
            },
            PolicySpec::Hybrid { floor, cap, rule } => {
                State::Hybrid { floor: *floor, cap: *cap, inner: Box::new(rule.start_request(request)) }
            }
            PolicySpec::Any { rules } => State::Any(rules.iter().map(|r| r.start_request(request)).collect()),
            PolicySpec::All { rules } => State::All(rules.iter().map(|r| r.start_request(request)).collect()),
            PolicySpec::Never => State::Never,
        };
        Rule { task, state }
    }
}

fn min_opt(min_tokens: u32) -> String {
    if min_tokens == 0 {
        String::new()
    } else {
        format!(",min={min_tokens}")
    }
}

/// TOML is read through its JSON-compatible value model so that both syntaxes share one schema.
fn toml_like(text: &str) -> Result<PolicySpec, PolicyError> {
    let value: serde_json::Value = toml_to_json(text)?;
    serde_path_to_error::deserialize(value).map_err(|e| PolicyError::Syntax(e.to_string()))
}

fn toml_to_json(text: &str) -> Result<serde_json::Value, PolicyError> {
    // The core crate stays free of a TOML dependency: callers that read TOML files deserialize
    // `PolicySpec` directly with their TOML library. Here only the inline `key = value` form used
    // on a command line is accepted: `type = "budget", max_tokens = 256`.
    let mut map = serde_json::Map::new();
    for part in text.split([',', '\n']).map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = part
            .split_once('=')
            .ok_or_else(|| PolicyError::Syntax(format!("expected `key = value`, found `{part}`")))?;
        let value = value.trim();
        let json = serde_json::from_str(value).map_err(|_| {
            PolicyError::Syntax(format!("value of `{}` is not a number, bool or quoted string: {value}", key.trim()))
        })?;
        map.insert(key.trim().to_owned(), json);
    }
    Ok(serde_json::Value::Object(map))
}

/// Per-request state of a stop rule.
#[derive(Debug, Clone)]
pub struct Rule {
    task: Task,
    state: State,
}

#[derive(Debug, Clone)]
enum State {
    Budget { max_tokens: u32 },
    Consistency { window: u32, min_tokens: u32, hedge_filter: bool, last: Option<String>, run: u32 },
    Confidence { threshold: f32, min_tokens: u32 },
    LogprobWindow { window: LogprobWindow, threshold: f32, min_tokens: u32, ready: bool },
    Learned { features: Box<FeatureState>, model: SharedModel, threshold: f32 },
    Hybrid { floor: u32, cap: u32, inner: Box<Rule> },
    Any(Vec<Rule>),
    All(Vec<Rule>),
    Never,
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
        match &mut self.state {
            State::Budget { max_tokens } => checkpoint.tokens >= *max_tokens,
            State::Consistency { .. } | State::Learned { .. } => true,
            State::Confidence { min_tokens, .. } => checkpoint.tokens >= *min_tokens,
            State::LogprobWindow { window, threshold, min_tokens, ready } => {
                let mean = window.push(checkpoint);
                *ready = checkpoint.tokens >= *min_tokens && mean >= f64::from(*threshold);
                *ready
            }
            State::Hybrid { floor, cap, inner } => {
                // Below the floor only a rule that learns from earlier answers needs them.
                let learns_from_history = inner.learns_from_answer_history();
                let inner_needs = inner.needs_probe(checkpoint);
                checkpoint.tokens >= *cap || (inner_needs && (learns_from_history || checkpoint.tokens >= *floor))
            }
            // Every member sees every checkpoint, so each one's state stays current.
            State::Any(rules) | State::All(rules) => {
                rules.iter_mut().fold(false, |needs, r| r.needs_probe(checkpoint) | needs)
            }
            State::Never => false,
        }
    }

    /// Step two: decides with the probed checkpoint, after [`Self::needs_probe`] on the same one.
    /// Where no probe was needed the probe fields may be empty; the decision is then `Continue`.
    pub fn decide(&mut self, checkpoint: &Checkpoint) -> Decision {
        let stop = match &mut self.state {
            State::Budget { max_tokens } => checkpoint.tokens >= *max_tokens,
            State::Consistency { window, min_tokens, hedge_filter, last, run } => {
                let answer = consistency_key(self.task, checkpoint, *hedge_filter);
                *run = next_run(last.as_deref(), answer.as_deref(), *run);
                *last = answer;
                checkpoint.tokens >= *min_tokens && *run >= *window
            }
            State::Confidence { threshold, min_tokens } => {
                checkpoint.tokens >= *min_tokens && confidence_score(checkpoint) >= *threshold
            }
            State::LogprobWindow { ready, .. } => *ready && !checkpoint.answer.is_empty(),
            State::Learned { features, model, threshold } => {
                learned_score(model, &features.push(checkpoint), checkpoint) >= f64::from(*threshold)
            }
            State::Hybrid { floor, cap, inner } => {
                // The inner rule sees every checkpoint, so its state (e.g. a run of equal answers)
                // is built up before the floor is reached.
                let inner_stops = inner.decide(checkpoint) == Decision::Stop;
                checkpoint.tokens >= *cap || (checkpoint.tokens >= *floor && inner_stops)
            }
            State::Any(rules) => rules.iter_mut().fold(false, |any, r| (r.decide(checkpoint) == Decision::Stop) | any),
            State::All(rules) => rules.iter_mut().fold(true, |all, r| (r.decide(checkpoint) == Decision::Stop) & all),
            State::Never => false,
        };
        if stop {
            Decision::Stop
        } else {
            Decision::Continue
        }
    }

    /// Whether the rule's decision depends on answers probed at earlier checkpoints.
    fn learns_from_answer_history(&self) -> bool {
        match &self.state {
            State::Consistency { .. } | State::Learned { .. } => true,
            State::Hybrid { inner, .. } => inner.learns_from_answer_history(),
            State::Any(rules) | State::All(rules) => rules.iter().any(Rule::learns_from_answer_history),
            State::Budget { .. } | State::Confidence { .. } | State::LogprobWindow { .. } | State::Never => false,
        }
    }
}

/// The answer a consistency rule compares: normalised, `None` when empty or hedged.
pub fn consistency_key(task: Task, checkpoint: &Checkpoint, hedge_filter: bool) -> Option<String> {
    if hedge_filter && answer::is_hedging(&checkpoint.probe_text) {
        return None;
    }
    Some(answer::normalize(task, &checkpoint.answer)).filter(|a| !a.is_empty())
}

/// Length of the run of equal answers ending at the current one.
pub fn next_run(previous: Option<&str>, current: Option<&str>, run: u32) -> u32 {
    match (previous, current) {
        (_, None) => 0,
        (Some(p), Some(c)) if p == c => run + 1,
        (_, Some(_)) => 1,
    }
}

/// DEER's score: the trial answer's mean token probability; an empty answer never qualifies.
pub fn confidence_score(checkpoint: &Checkpoint) -> f32 {
    if checkpoint.answer.is_empty() {
        f32::NEG_INFINITY
    } else {
        checkpoint.mean_prob
    }
}

/// The learned rule's score of a checkpoint; an empty answer never qualifies.
pub fn learned_score(model: &SharedModel, features: &crate::features::Features, checkpoint: &Checkpoint) -> f64 {
    if checkpoint.answer.is_empty() {
        f64::NEG_INFINITY
    } else {
        model.score(features)
    }
}

/// Mean log-probability over (about) the last `window` generated tokens, from per-segment means.
///
/// Checkpoints carry the mean log-prob of the tokens since the previous checkpoint; the window
/// keeps whole segments, the oldest partly weighted, so any window can be replayed from a trace.
#[derive(Debug, Clone)]
pub struct LogprobWindow {
    window: u32,
    /// (tokens in the segment, mean log-prob of the segment)
    segments: VecDeque<(u32, f64)>,
    last_tokens: u32,
}

impl LogprobWindow {
    pub fn new(window: u32) -> Self {
        LogprobWindow { window: window.max(1), segments: VecDeque::new(), last_tokens: 0 }
    }

    /// Adds the checkpoint's segment and returns the window's mean log-probability.
    pub fn push(&mut self, checkpoint: &Checkpoint) -> f64 {
        let length = checkpoint.tokens.saturating_sub(self.last_tokens);
        self.last_tokens = checkpoint.tokens;
        self.segments.push_back((length, f64::from(checkpoint.segment_logprob)));
        let mut covered = 0u32;
        let mut sum = 0.0;
        let mut keep = 0;
        for &(len, mean) in self.segments.iter().rev() {
            let take = len.min(self.window - covered);
            sum += mean * f64::from(take);
            covered += take;
            keep += 1;
            if covered == self.window {
                break;
            }
        }
        while self.segments.len() > keep {
            self.segments.pop_front();
        }
        if covered == 0 {
            f64::NEG_INFINITY
        } else {
            sum / f64::from(covered)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_say_which_log_probs_they_read() {
        let window = PolicySpec::parse("deepconf-high").unwrap();
        let deer = PolicySpec::parse("deer").unwrap();
        let budget = PolicySpec::Budget { max_tokens: 8 };
        assert!(window.reads_token_logprobs() && !window.reads_probe_confidence());
        assert!(!deer.reads_token_logprobs() && deer.reads_probe_confidence());
        assert!(!budget.reads_token_logprobs() && !budget.reads_probe_confidence());
        let hybrid = PolicySpec::Hybrid { floor: 0, cap: 10, rule: Box::new(window.clone()) };
        assert!(hybrid.reads_token_logprobs());
        assert!(PolicySpec::Any { rules: vec![budget, deer] }.reads_probe_confidence());
    }

    #[test]
    fn version_tells_settings_apart() {
        let a = PolicySpec::Confidence { threshold: 0.9, min_tokens: 0 };
        assert_eq!(a.version(), a.clone().version());
        assert_eq!(a.version().len(), 16);
        assert_ne!(a.version(), PolicySpec::Confidence { threshold: 0.91, min_tokens: 0 }.version());
        assert_ne!(a.version(), PolicySpec::Budget { max_tokens: 64 }.version());
    }

    fn cp(tokens: u32, answer: &str, mean_prob: f32, logprob: f32) -> Checkpoint {
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

    fn first_stop(spec: &PolicySpec, cps: &[Checkpoint]) -> Option<usize> {
        decisions(spec, cps).iter().position(|d| *d == Decision::Stop)
    }

    fn run_of(answers: &[&str]) -> Vec<Checkpoint> {
        answers.iter().enumerate().map(|(i, a)| cp(32 * (i as u32 + 1), a, 0.5, -1.0)).collect()
    }

    #[test]
    fn budget_stops_at_the_first_checkpoint_reaching_it() {
        let cps = run_of(&["1", "2", "3", "4"]);
        assert_eq!(first_stop(&PolicySpec::Budget { max_tokens: 64 }, &cps), Some(1));
        assert_eq!(first_stop(&PolicySpec::Budget { max_tokens: 65 }, &cps), Some(2));
        assert_eq!(first_stop(&PolicySpec::Budget { max_tokens: 1000 }, &cps), None);
    }

    #[test]
    fn consistency_needs_window_equal_non_empty_answers() {
        let spec = |window| PolicySpec::Consistency { window, min_tokens: 0, hedge_filter: false };
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
        let spec = PolicySpec::Consistency { window: 2, min_tokens: 150, hedge_filter: false };
        assert_eq!(first_stop(&spec, &run_of(&["7", "7", "7", "7", "7"])), Some(4));
    }

    #[test]
    fn confidence_and_logprob_window_thresholds() {
        let cps = vec![cp(32, "3", 0.5, -2.0), cp(64, "", 0.99, -0.01), cp(96, "4", 0.96, -0.1)];
        assert_eq!(first_stop(&PolicySpec::Confidence { threshold: 0.95, min_tokens: 0 }, &cps), Some(2));
        assert_eq!(first_stop(&PolicySpec::Confidence { threshold: 0.4, min_tokens: 0 }, &cps), Some(0));
        // Window of 64 tokens over segments of 32: means -1.005 at 64, -0.055 at 96.
        let lw = |threshold| PolicySpec::LogprobWindow { window: 64, threshold, min_tokens: 0 };
        assert_eq!(first_stop(&lw(-0.06), &cps), Some(2));
        assert_eq!(first_stop(&lw(-0.05), &cps), None);
    }

    #[test]
    fn logprob_window_weights_partial_segments() {
        let mut w = LogprobWindow::new(48);
        assert_eq!(w.push(&cp(32, "", 0.0, -1.0)), -1.0);
        // 32 tokens at -2 plus 16 of the previous 32 at -1.
        let mean = w.push(&cp(64, "", 0.0, -2.0));
        assert!((mean - (-2.0 * 32.0 - 16.0) / 48.0).abs() < 1e-9, "{mean}");
    }

    #[test]
    fn hybrid_floor_and_cap() {
        let inner = PolicySpec::Consistency { window: 2, min_tokens: 0, hedge_filter: false };
        let hybrid = |floor, cap| PolicySpec::Hybrid { floor, cap, rule: Box::new(inner.clone()) };
        let cps = run_of(&["7", "7", "8", "9", "10", "11"]);
        assert_eq!(first_stop(&hybrid(0, 1000), &cps), Some(1));
        assert_eq!(first_stop(&hybrid(96, 1000), &cps), None, "the run ended before the floor");
        assert_eq!(first_stop(&hybrid(64, 1000), &cps), Some(1));
        assert_eq!(first_stop(&hybrid(96, 160), &cps), Some(4));
    }

    #[test]
    fn any_and_all_combine_children() {
        let cps = run_of(&["7", "7", "7", "7"]);
        let budget = PolicySpec::Budget { max_tokens: 96 };
        let cons = PolicySpec::Consistency { window: 2, min_tokens: 0, hedge_filter: false };
        assert_eq!(first_stop(&PolicySpec::Any { rules: vec![budget.clone(), cons.clone()] }, &cps), Some(1));
        assert_eq!(first_stop(&PolicySpec::All { rules: vec![budget, cons] }, &cps), Some(2));
    }

    #[test]
    fn never_never_stops() {
        assert_eq!(first_stop(&PolicySpec::Never, &run_of(&["1", "1", "1"])), None);
    }

    #[test]
    fn parses_presets_json_and_inline_toml() {
        assert_eq!(PolicySpec::parse("deer"), Ok(PolicySpec::Confidence { threshold: 0.95, min_tokens: 0 }));
        assert_eq!(
            PolicySpec::parse(r#"{"type":"budget","max_tokens":256}"#),
            Ok(PolicySpec::Budget { max_tokens: 256 })
        );
        assert_eq!(
            PolicySpec::parse(r#"type = "consistency", window = 3"#),
            Ok(PolicySpec::Consistency { window: 3, min_tokens: 0, hedge_filter: false })
        );
        let nested = r#"{"type":"hybrid","floor":64,"cap":512,"rule":{"type":"confidence","threshold":0.9}}"#;
        assert_eq!(
            PolicySpec::parse(nested),
            Ok(PolicySpec::Hybrid {
                floor: 64,
                cap: 512,
                rule: Box::new(PolicySpec::Confidence { threshold: 0.9, min_tokens: 0 })
            })
        );
    }

    #[test]
    fn toml_tables_deserialize_to_the_same_spec() {
        let spec: PolicySpec = toml::from_str(
            "type = \"any\"\n[[rules]]\ntype = \"budget\"\nmax_tokens = 300\n[[rules]]\ntype = \"confidence\"\nthreshold = 0.9\n",
        )
        .unwrap();
        assert_eq!(
            spec,
            PolicySpec::Any {
                rules: vec![
                    PolicySpec::Budget { max_tokens: 300 },
                    PolicySpec::Confidence { threshold: 0.9, min_tokens: 0 }
                ]
            }
        );
    }

    #[test]
    fn rejects_unknown_fields_presets_and_bad_ranges() {
        let err = PolicySpec::parse(r#"{"type":"budget","max_tokens":5,"colour":1}"#).unwrap_err();
        assert!(err.to_string().contains("colour"), "{err}");
        let err = PolicySpec::parse("dynasor").unwrap_err();
        assert!(err.to_string().contains("dynasor-cot"), "{err}");
        let err = PolicySpec::parse(r#"{"type":"confidence","threshold":1.5}"#).unwrap_err();
        assert!(err.to_string().contains("threshold"), "{err}");
        let err = PolicySpec::parse(r#"{"type":"any","rules":[]}"#).unwrap_err();
        assert!(err.to_string().contains("rules"), "{err}");
        // Internally tagged enums buffer their fields, so serde reports the type, not the path.
        let err = PolicySpec::parse(r#"{"type":"budget","max_tokens":"x"}"#).unwrap_err();
        assert!(err.to_string().contains("expected u32"), "{err}");
    }

    #[test]
    fn every_preset_is_valid() {
        for (name, spec, _) in presets() {
            assert_eq!(spec.validate(), Ok(()), "{name}");
            assert_eq!(PolicySpec::parse(name), Ok(spec));
        }
    }
}
