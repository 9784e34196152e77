//! The online estimator: does the certified guarantee still hold on today's traffic?
//!
//! A route serves one setting of a *ladder*: candidate settings ordered from the most aggressive
//! to the safest, ending with no stopping. Every audited request (run to its natural end after
//! the client had its answer, probed at every checkpoint) is replayed under every setting of the
//! ladder, exactly as `stopwise sweep` replays trace files. Over a sliding window of the last
//! `window` audits, each setting gets its risk (disagreement with the full answer, or EM drop on
//! the audits that have gold from feedback) and a Clopper-Pearson upper confidence bound at
//! level 1 − δ.
//!
//! Which settings the window certifies is decided by fixed-sequence testing, as Learn-then-Test
//! does offline: from the safest setting towards the most aggressive, each is tested at δ and
//! the first whose bound exceeds ε ends the sequence. This holds the family-wise error at δ
//! without dividing δ among the settings. The certified settings are then a run at the safe end
//! of the ladder.
//!
//! - **Fallback**: when the active setting is no longer certified (its bound, or a safer one's,
//!   exceeds ε), the route switches at once to the next safer setting that is certified, or to no
//!   stopping.
//! - **Promotion**: when a more aggressive setting is certified, the route switches to it, or a
//!   proposal waits for an operator to approve it ([`Promote`]).
//! - **Too few audits**: no setting can be certified before the window holds
//!   `ln δ / ln(1 − ε)` measured audits (the count at which zero losses give a bound of ε), so
//!   until then nothing changes and the offline certificate stands.
//!
//! Pure: a state machine fed with traces, no clock, no I/O.

use std::collections::VecDeque;

use serde::Serialize;

use crate::certify::{upper_bound, PValue, Risk};
use crate::replay::{replay, Limits, TraceFacts};
use crate::rules::PolicySpec;
use crate::trace::Trace;

/// What to do when the window certifies a more aggressive setting than the active one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Promote {
    /// Nothing: only fallbacks happen.
    Off,
    /// A proposal that an operator approves or rejects.
    #[default]
    Propose,
    /// Switch to it at once.
    Auto,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OnlineSettings {
    pub epsilon: f64,
    pub delta: f64,
    pub risk: Risk,
    /// Audits the window holds (the most recent).
    pub window: usize,
    pub promote: Promote,
    /// The route's limits, applied in replay as serve applies them.
    pub limits: Limits,
}

/// Why the settings cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OnlineError {
    #[error("epsilon must be in (0, 1) and delta in (0, 1)")]
    Levels,
    #[error("the window must hold at least one audit")]
    Window,
    #[error("the active setting {0} is not on the ladder of {1} settings")]
    Active(usize, usize),
}

/// One setting's figures over the window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Estimate {
    pub label: String,
    pub version: String,
    /// Audits the risk is measured on (those with gold, for EM drop) and the losses among them.
    pub n: u64,
    pub losses: u64,
    pub risk: f64,
    /// Upper confidence bound on the risk at level 1 − δ.
    pub bound: f64,
    /// Certified by the window (fixed-sequence test from the safe end).
    pub certified: bool,
    /// `1 − tokens paid / full-run tokens` over the window, probe tokens counted.
    pub token_reduction: f64,
}

/// A change the estimator made or proposes, with the evidence for it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Change {
    /// The active setting lost its certificate; `to` is safer.
    Fallback { from: usize, to: usize, bound: f64, n: u64 },
    /// A more aggressive setting was certified and is now active.
    Promotion { from: usize, to: usize, bound: f64, n: u64 },
    /// A more aggressive setting was certified; an operator may approve it.
    Proposal { from: usize, to: usize, bound: f64, n: u64 },
}

/// One audit's result under one setting.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Scored {
    disagree: bool,
    /// `None` without gold.
    em_loss: Option<bool>,
    cost: u64,
    full_cost: u64,
}

#[derive(Debug, Clone)]
pub struct Estimator {
    settings: OnlineSettings,
    ladder: Vec<PolicySpec>,
    active: usize,
    /// Per audit in the window, its result under each setting of the ladder.
    window: VecDeque<Vec<Scored>>,
    proposal: Option<Change>,
    /// Bumped at every change of the active setting.
    generation: u64,
}

impl Estimator {
    /// `ladder` from the most aggressive to the safest; no stopping is added at the safe end when
    /// missing. `active` indexes it.
    pub fn new(mut ladder: Vec<PolicySpec>, active: usize, settings: OnlineSettings) -> Result<Self, OnlineError> {
        let level = |x: f64| x > 0.0 && x < 1.0;
        if !level(settings.epsilon) || !level(settings.delta) {
            return Err(OnlineError::Levels);
        }
        if settings.window == 0 {
            return Err(OnlineError::Window);
        }
        if ladder.last() != Some(&PolicySpec::NEVER) {
            ladder.push(PolicySpec::NEVER);
        }
        if active >= ladder.len() {
            return Err(OnlineError::Active(active, ladder.len()));
        }
        Ok(Estimator { settings, ladder, active, window: VecDeque::new(), proposal: None, generation: 0 })
    }

    pub fn ladder(&self) -> &[PolicySpec] {
        &self.ladder
    }

    pub fn active(&self) -> usize {
        self.active
    }

    pub fn active_policy(&self) -> &PolicySpec {
        &self.ladder[self.active]
    }

    /// How many times the active setting changed.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn settings(&self) -> &OnlineSettings {
        &self.settings
    }

    /// Audits in the window.
    pub fn audits(&self) -> usize {
        self.window.len()
    }

    pub fn proposal(&self) -> Option<&Change> {
        self.proposal.as_ref()
    }

    /// Measured audits from which zero losses certify ε at δ: `ln δ / ln(1 − ε)`, rounded up.
    pub fn min_audits(&self) -> u64 {
        (self.settings.delta.ln() / (1.0 - self.settings.epsilon).ln()).ceil().max(1.0) as u64
    }

    /// Takes one audited trace (a full run probed at every checkpoint, gold joined when known)
    /// and returns the change it caused, if any.
    pub fn observe(&mut self, trace: &Trace) -> Option<Change> {
        let facts = TraceFacts::of(trace);
        let full_cost = u64::from(facts.full_tokens);
        let scored = self
            .ladder
            .iter()
            .map(|spec| {
                let outcome = replay(spec, trace, &facts, self.settings.limits);
                Scored {
                    disagree: !outcome.agree,
                    em_loss: facts.has_gold.then_some(facts.full_em && !outcome.em),
                    cost: outcome.generated + outcome.probe_tokens,
                    full_cost,
                }
            })
            .collect();
        self.window.push_back(scored);
        while self.window.len() > self.settings.window {
            self.window.pop_front();
        }
        self.decide()
    }

    /// Applies the pending proposal.
    pub fn approve(&mut self) -> Option<Change> {
        let Change::Proposal { from, to, bound, n } = self.proposal.take()? else { return None };
        if from != self.active {
            return None;
        }
        self.switch(to);
        Some(Change::Promotion { from, to, bound, n })
    }

    pub fn reject(&mut self) -> Option<Change> {
        self.proposal.take()
    }

    /// Makes `index` the active setting by hand (an operator's choice).
    pub fn set_active(&mut self, index: usize) -> bool {
        if index >= self.ladder.len() {
            return false;
        }
        self.proposal = None;
        if index != self.active {
            self.switch(index);
        }
        true
    }

    fn switch(&mut self, to: usize) {
        self.active = to;
        self.generation += 1;
    }

    /// Every setting's figures over the window.
    pub fn estimates(&self) -> Vec<Estimate> {
        let alpha = self.settings.delta;
        let mut out: Vec<Estimate> = (0..self.ladder.len())
            .map(|i| {
                let (mut n, mut losses, mut cost, mut full) = (0u64, 0u64, 0u64, 0u64);
                for audit in &self.window {
                    let s = audit[i];
                    cost += s.cost;
                    full += s.full_cost;
                    let loss = match self.settings.risk {
                        Risk::Disagreement => Some(s.disagree),
                        Risk::EmDrop => s.em_loss,
                    };
                    if let Some(loss) = loss {
                        n += 1;
                        losses += u64::from(loss);
                    }
                }
                let spec = &self.ladder[i];
                Estimate {
                    label: spec.label(),
                    version: spec.version(),
                    n,
                    losses,
                    risk: if n == 0 { 0.0 } else { losses as f64 / n as f64 },
                    bound: upper_bound(PValue::Binomial, n, losses, alpha),
                    certified: false,
                    token_reduction: if full == 0 { 0.0 } else { 1.0 - cost as f64 / full as f64 },
                }
            })
            .collect();
        // Fixed-sequence testing from the safe end: certified until the first failure.
        for estimate in out.iter_mut().rev() {
            if estimate.bound > self.settings.epsilon {
                break;
            }
            estimate.certified = true;
        }
        out
    }

    fn decide(&mut self) -> Option<Change> {
        let estimates = self.estimates();
        let active = &estimates[self.active];
        if active.n < self.min_audits() {
            return None;
        }
        let from = self.active;
        if !active.certified {
            // The safest setting (no stopping) has no risk, so once the window is long enough it
            // is certified; before that, it is still where a fallback ends.
            let to = (from + 1..estimates.len()).find(|&i| estimates[i].certified).unwrap_or(estimates.len() - 1);
            self.proposal = None;
            self.switch(to);
            return Some(Change::Fallback { from, to, bound: active.bound, n: active.n });
        }
        let most_aggressive = estimates.iter().position(|e| e.certified)?;
        if most_aggressive >= from || self.settings.promote == Promote::Off {
            return None;
        }
        let target = &estimates[most_aggressive];
        let (bound, n) = (target.bound, target.n);
        if self.settings.promote == Promote::Auto {
            self.proposal = None;
            self.switch(most_aggressive);
            return Some(Change::Promotion { from, to: most_aggressive, bound, n });
        }
        let proposal = Change::Proposal { from, to: most_aggressive, bound, n };
        // A standing proposal is not made again at every audit.
        let new =
            !matches!(self.proposal, Some(Change::Proposal { to, from: f, .. }) if to == most_aggressive && f == from);
        self.proposal = Some(proposal.clone());
        new.then_some(proposal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::answer::Task;
    use crate::rules::budget::Budget;
    use crate::trace::{Checkpoint, Final, ProbeSettings};

    /// A full run of 4 checkpoints (32..128 tokens) whose probes answer `early` at 32 and the
    /// final answer from 64 on, ending at 160 tokens.
    fn audit(early: &str, gold: Option<&str>) -> Trace {
        let checkpoint = |tokens: u32, answer: &str| Checkpoint {
            tokens,
            answer: answer.into(),
            probe_text: answer.into(),
            answer_tokens: 2,
            mean_prob: 0.9,
            min_prob: 0.9,
            segment_logprob: -0.1,
            segment_entropy: 0.1,
        };
        Trace {
            v: 1,
            id: "a".into(),
            dataset: "served".into(),
            task: Task::Numeric,
            question: None,
            gold: gold.map(|g| vec![g.to_owned()]).unwrap_or_default(),
            model: "m".into(),
            prompt_tokens: 10,
            probe: ProbeSettings { suffix: "\nFinal answer: ".into(), max_tokens: 8, interval: 32 },
            checkpoints: vec![checkpoint(32, early), checkpoint(64, "7"), checkpoint(96, "7"), checkpoint(128, "7")],
            final_: Final {
                tokens: 160,
                answer: "7".into(),
                finish_reason: "stop".into(),
                text: None,
                text_offsets: Vec::new(),
            },
            served: None,
        }
    }

    fn ladder() -> Vec<PolicySpec> {
        vec![Budget { max_tokens: 32 }.into(), Budget { max_tokens: 64 }.into()]
    }

    fn settings(promote: Promote) -> OnlineSettings {
        OnlineSettings {
            epsilon: 0.1,
            delta: 0.05,
            risk: Risk::Disagreement,
            window: 100,
            promote,
            limits: Limits::default(),
        }
    }

    #[test]
    fn the_minimum_window_is_where_zero_losses_certify() {
        let e = Estimator::new(ladder(), 0, settings(Promote::Off)).unwrap();
        let n = e.min_audits();
        assert_eq!(n, 29, "ln 0.05 / ln 0.9 = 28.4");
        assert!(upper_bound(PValue::Binomial, n, 0, 0.05) <= 0.1);
        assert!(upper_bound(PValue::Binomial, n - 1, 0, 0.05) > 0.1);
        assert_eq!(e.ladder().last(), Some(&PolicySpec::NEVER), "no stopping ends every ladder");
    }

    #[test]
    fn nothing_changes_before_the_window_can_certify() {
        let mut e = Estimator::new(ladder(), 0, settings(Promote::Auto)).unwrap();
        for _ in 0..e.min_audits() - 1 {
            assert_eq!(e.observe(&audit("3", None)), None, "every audit disagrees at 32, but too few yet");
        }
        assert_eq!(e.active(), 0);
    }

    #[test]
    fn a_setting_that_changes_answers_falls_back_to_the_next_certified_one() {
        let mut e = Estimator::new(ladder(), 0, settings(Promote::Off)).unwrap();
        let mut change = None;
        for _ in 0..e.min_audits() {
            change = change.or(e.observe(&audit("3", None)));
        }
        // The budget of 32 stops at the wrong early answer; 64 agrees with the full run.
        let Some(Change::Fallback { from: 0, to: 1, bound, n }) = change else { panic!("{change:?}") };
        assert!(bound > 0.1 && n == e.min_audits());
        assert_eq!((e.active(), e.generation()), (1, 1));
        let estimates = e.estimates();
        assert_eq!(estimates.iter().map(|x| x.certified).collect::<Vec<_>>(), [false, true, true]);
        assert!((estimates[1].token_reduction - (1.0 - 66.0 / 160.0)).abs() < 1e-9);
    }

    #[test]
    fn fresh_evidence_proposes_or_promotes_a_more_aggressive_setting() {
        for promote in [Promote::Propose, Promote::Auto] {
            let mut e = Estimator::new(ladder(), 2, settings(promote)).unwrap();
            let mut changes = Vec::new();
            for _ in 0..40 {
                changes.extend(e.observe(&audit("7", None)));
            }
            match promote {
                Promote::Auto => {
                    assert!(matches!(changes[..], [Change::Promotion { from: 2, to: 0, .. }]), "{changes:?}");
                    assert_eq!(e.active(), 0);
                }
                _ => {
                    assert!(matches!(changes[..], [Change::Proposal { from: 2, to: 0, .. }]), "once: {changes:?}");
                    assert_eq!(e.active(), 2, "a proposal waits for approval");
                    assert!(matches!(e.approve(), Some(Change::Promotion { to: 0, .. })));
                    assert_eq!(e.active(), 0);
                }
            }
        }
    }

    #[test]
    fn em_drop_counts_only_audits_with_gold() {
        let mut s = settings(Promote::Off);
        s.risk = Risk::EmDrop;
        let mut e = Estimator::new(ladder(), 0, s).unwrap();
        for _ in 0..100 {
            assert_eq!(e.observe(&audit("3", None)), None, "no gold, no EM drop measured");
        }
        assert_eq!(e.estimates()[0].n, 0);
        // With gold: the early answer is wrong where the full one was right.
        let mut change = None;
        for _ in 0..e.min_audits() {
            change = change.or(e.observe(&audit("3", Some("7"))));
        }
        assert!(matches!(change, Some(Change::Fallback { from: 0, to: 1, .. })), "{change:?}");
    }

    #[test]
    fn the_window_forgets_old_audits() {
        let mut s = settings(Promote::Auto);
        s.window = 40;
        let mut e = Estimator::new(ladder(), 0, s).unwrap();
        for _ in 0..40 {
            e.observe(&audit("3", None));
        }
        assert_eq!(e.active(), 1);
        for _ in 0..40 {
            e.observe(&audit("7", None));
        }
        assert_eq!(e.audits(), 40);
        assert_eq!(e.active(), 0, "the disagreeing audits left the window; 32 is certified again");
    }

    #[test]
    fn bad_settings_are_refused() {
        let mut s = settings(Promote::Off);
        s.epsilon = 0.0;
        assert_eq!(Estimator::new(ladder(), 0, s).unwrap_err(), OnlineError::Levels);
        let mut s = settings(Promote::Off);
        s.window = 0;
        assert_eq!(Estimator::new(ladder(), 0, s).unwrap_err(), OnlineError::Window);
        assert!(matches!(Estimator::new(ladder(), 3, settings(Promote::Off)), Err(OnlineError::Active(3, 3))));
    }

    proptest::proptest! {
        /// Whatever the traffic: after every audit, the active setting is certified by the window,
        /// or the window is too short to certify anything, or it is the last resort (no
        /// stopping); a fallback always moves to a safer setting, a promotion to a more
        /// aggressive one.
        #[test]
        fn the_active_setting_always_has_its_certificate(
            traffic in proptest::collection::vec((0u8..3, proptest::bool::ANY), 1..200),
            window in 30usize..120,
            promote_auto in proptest::bool::ANY,
        ) {
            let mut s = settings(if promote_auto { Promote::Auto } else { Promote::Off });
            s.window = window;
            let mut e = Estimator::new(ladder(), 0, s).unwrap();
            for (early, labelled) in traffic {
                let answer = ["3", "7", ""][usize::from(early)];
                let before = e.active();
                match e.observe(&audit(answer, labelled.then_some("7"))) {
                    Some(Change::Fallback { from, to, .. }) => proptest::prop_assert!(from == before && to > from),
                    Some(Change::Promotion { from, to, .. }) => proptest::prop_assert!(from == before && to < from),
                    Some(Change::Proposal { .. }) => proptest::prop_assert!(false, "promotion is auto or off"),
                    None => proptest::prop_assert_eq!(e.active(), before),
                }
                let estimates = e.estimates();
                let active = &estimates[e.active()];
                proptest::prop_assert!(
                    active.certified || active.n < e.min_audits() || e.active() == e.ladder().len() - 1,
                    "active {} uncertified: {:?}", e.active(), estimates
                );
            }
        }
    }
}
