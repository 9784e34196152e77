//! Replay of stop rules over recorded traces, and the accounting of what stopping cost and saved.
//!
//! A trace is first reduced to [`TraceFacts`] (answers normalised and scored once); any stop point
//! then maps to an [`Outcome`], and outcomes add up into a [`Tally`] whose [`Summary`] is what
//! every report prints. Token accounting follows DESIGN.md: probe tokens always count.

use serde::Serialize;

use crate::answer;
use crate::features::RequestInfo;
use crate::rules::{Decision, PolicySpec};
use crate::trace::Trace;

/// What replay needs of one checkpoint, scored once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CheckpointFacts {
    pub tokens: u32,
    pub probe_tokens: u32,
    /// Probe tokens of this checkpoint and every earlier one.
    pub probe_tokens_through: u64,
    /// The probed answer is correct (EM against gold).
    pub em: bool,
    /// The probed answer equals the full run's answer.
    pub agree: bool,
    /// The normalised probed answer, interned per trace: equal ids are equal answers, and 0 is
    /// the empty answer. What consistency rules compare, without comparing strings.
    pub answer_id: u32,
    /// The probe's text hedges (see [`answer::is_hedging`]).
    pub hedging: bool,
}

/// A trace reduced to what replay needs.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceFacts {
    pub checkpoints: Vec<CheckpointFacts>,
    pub full_tokens: u32,
    pub full_em: bool,
    pub has_gold: bool,
    /// Probe tokens of all checkpoints, i.e. the cost of probing a run that never stops.
    pub all_probe_tokens: u64,
}

impl TraceFacts {
    pub fn of(trace: &Trace) -> Self {
        let task = trace.task;
        // Each answer and gold alias is normalised once: this is the hot path of every sweep.
        let gold: Vec<String> = trace.gold.iter().map(|g| answer::normalize(task, g)).collect();
        let scores = |normalised: &str| !normalised.is_empty() && gold.iter().any(|g| g == normalised);
        let full = answer::normalize(task, &trace.final_.answer);
        let mut probe_tokens_through = 0;
        let mut interned: Vec<String> = Vec::new();
        let checkpoints = trace
            .checkpoints
            .iter()
            .map(|c| {
                let probed = answer::normalize(task, &c.answer);
                probe_tokens_through += u64::from(c.answer_tokens);
                let answer_id = if probed.is_empty() {
                    0
                } else {
                    let index = interned.iter().position(|a| *a == probed).unwrap_or_else(|| {
                        interned.push(probed.clone());
                        interned.len() - 1
                    });
                    index as u32 + 1
                };
                CheckpointFacts {
                    answer_id,
                    hedging: answer::is_hedging(&c.probe_text),
                    tokens: c.tokens,
                    probe_tokens: c.answer_tokens,
                    probe_tokens_through,
                    em: scores(&probed),
                    agree: probed == full,
                }
            })
            .collect::<Vec<_>>();
        TraceFacts {
            all_probe_tokens: probe_tokens_through,
            checkpoints,
            full_tokens: trace.final_.tokens,
            full_em: scores(&full),
            has_gold: !trace.gold.is_empty(),
        }
    }

    /// The outcome of stopping at checkpoint `stop` (or never), paying for the probes `charge`
    /// names.
    pub fn outcome(&self, stop: Option<usize>, charge: ProbeCharge) -> Outcome {
        let probe_tokens = match (charge, stop) {
            (ProbeCharge::StopOnly, None) => 0,
            (ProbeCharge::StopOnly, Some(i)) => u64::from(self.checkpoints[i].probe_tokens),
            (ProbeCharge::Every, None) => self.all_probe_tokens,
            (ProbeCharge::Every, Some(i)) => self.checkpoints[i].probe_tokens_through,
        };
        self.outcome_paying(stop, probe_tokens)
    }

    /// The outcome of stopping at checkpoint `stop` (or never) after `probe_tokens` of probes.
    pub fn outcome_paying(&self, stop: Option<usize>, probe_tokens: u64) -> Outcome {
        match stop {
            None => {
                Outcome { stop, generated: u64::from(self.full_tokens), probe_tokens, em: self.full_em, agree: true }
            }
            Some(i) => {
                let c = self.checkpoints[i];
                Outcome { stop, generated: u64::from(c.tokens), probe_tokens, em: c.em, agree: c.agree }
            }
        }
    }

    /// The oracle: the first checkpoint from which every probe agrees with the full answer. It
    /// knows where to look, so it pays for one probe only.
    pub fn oracle_stop(&self) -> Option<usize> {
        let disagreeing_tail = self.checkpoints.iter().rposition(|c| !c.agree);
        let first = disagreeing_tail.map_or(0, |i| i + 1);
        (first < self.checkpoints.len()).then_some(first)
    }
}

/// The result of one rule on one trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Index of the checkpoint where the rule stopped; `None` for a full run.
    pub stop: Option<usize>,
    /// Tokens generated by the run itself (probes not included).
    pub generated: u64,
    /// Tokens decoded by probes.
    pub probe_tokens: u64,
    pub em: bool,
    pub agree: bool,
}

/// Which probes a rule pays for, up to and including its stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeCharge {
    /// Only the probe that reads the answer where it stops (a budget).
    StopOnly,
    /// A probe at every checkpoint (a rule whose signal is the probed answers).
    Every,
}

/// The limits serve puts on every request of a route that change where a rule stops or what it
/// pays. Replay applies them as serve does, so that swept and certified figures describe serving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Probes asked for at most per request (serve's `probe.max_probes`); at later checkpoints
    /// the rule is fed the checkpoint unprobed and cannot stop there.
    pub max_probes: u32,
}

impl Limits {
    /// Serve's default `probe.max_probes`.
    pub const DEFAULT_MAX_PROBES: u32 = 64;

    /// Whether the limits can matter on `trace`: a request probes each checkpoint at most once,
    /// so one with no more checkpoints than `max_probes` never reaches the limit.
    pub fn may_bind(&self, trace: &Trace) -> bool {
        trace.checkpoints.len() > self.max_probes as usize
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_probes: Self::DEFAULT_MAX_PROBES }
    }
}

/// Replays a rule on one trace with the same state machine that runs online, paying for the
/// probes it asks for ([`crate::rules::Rule::needs_probe`]) as serve does under `limits`: a
/// checkpoint not probed (not needed, or past `max_probes`) is decided unprobed and cannot stop.
pub fn replay(spec: &PolicySpec, trace: &Trace, facts: &TraceFacts, limits: Limits) -> Outcome {
    let mut rule = spec.start_request(RequestInfo::of(trace));
    let mut asked = 0;
    let mut probe_tokens = 0;
    let mut stop = None;
    for (i, c) in trace.checkpoints.iter().enumerate() {
        if !rule.needs_probe(c) || asked >= limits.max_probes {
            // `decide` keeps the rule's state in step; without an answer it cannot stop.
            rule.decide(&c.unprobed());
            continue;
        }
        asked += 1;
        probe_tokens += u64::from(facts.checkpoints[i].probe_tokens);
        if rule.decide(c) == Decision::Stop {
            stop = Some(i);
            break;
        }
    }
    facts.outcome_paying(stop, probe_tokens)
}

/// Sums of outcomes over a set of traces. Signed so that sweeps can use difference arrays.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub items: i64,
    pub with_gold: i64,
    pub em_full: i64,
    pub em_stopped: i64,
    pub agree: i64,
    pub stopped: i64,
    pub tokens_full: i64,
    pub generated: i64,
    pub probe_tokens: i64,
}

impl Tally {
    pub fn add(&mut self, facts: &TraceFacts, outcome: &Outcome) {
        self.add_scaled(facts, outcome, 1);
    }

    /// Adds `sign` times the outcome (`-1` removes it): used by difference arrays.
    pub fn add_scaled(&mut self, facts: &TraceFacts, outcome: &Outcome, sign: i64) {
        let gold = i64::from(facts.has_gold);
        self.items += sign;
        self.with_gold += sign * gold;
        self.em_full += sign * gold * i64::from(facts.full_em);
        self.em_stopped += sign * gold * i64::from(outcome.em);
        self.agree += sign * i64::from(outcome.agree);
        self.stopped += sign * i64::from(outcome.stop.is_some());
        self.tokens_full += sign * i64::from(facts.full_tokens);
        self.generated += sign * outcome.generated as i64;
        self.probe_tokens += sign * outcome.probe_tokens as i64;
    }

    pub fn merge(&mut self, other: &Tally) {
        self.items += other.items;
        self.with_gold += other.with_gold;
        self.em_full += other.em_full;
        self.em_stopped += other.em_stopped;
        self.agree += other.agree;
        self.stopped += other.stopped;
        self.tokens_full += other.tokens_full;
        self.generated += other.generated;
        self.probe_tokens += other.probe_tokens;
    }

    pub fn summary(&self) -> Summary {
        let share = |num: i64, den: i64| if den == 0 { 0.0 } else { num as f64 / den as f64 };
        let em_full = share(self.em_full, self.with_gold);
        let em_stopped = share(self.em_stopped, self.with_gold);
        Summary {
            items: self.items as u64,
            items_with_gold: self.with_gold as u64,
            em_full,
            em_stopped,
            em_drop: em_full - em_stopped,
            agreement: share(self.agree, self.items),
            stopped_early: share(self.stopped, self.items),
            tokens_full: self.tokens_full as u64,
            tokens_generated: self.generated as u64,
            tokens_probe: self.probe_tokens as u64,
            token_reduction: 1.0 - share(self.generated + self.probe_tokens, self.tokens_full),
            generated_reduction: 1.0 - share(self.generated, self.tokens_full),
            probe_overhead: share(self.probe_tokens, self.tokens_full),
        }
    }
}

/// What a rule did on a set of traces.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    pub items: u64,
    /// Items with a gold answer; EM figures are over these.
    pub items_with_gold: u64,
    pub em_full: f64,
    pub em_stopped: f64,
    /// `em_full - em_stopped`.
    pub em_drop: f64,
    /// Share of items whose stopped answer equals the full answer.
    pub agreement: f64,
    /// Share of items stopped before the end.
    pub stopped_early: f64,
    pub tokens_full: u64,
    pub tokens_generated: u64,
    pub tokens_probe: u64,
    /// `1 - (generated + probe tokens) / full tokens`: the honest saving, negative when probing
    /// cost more than stopping saved.
    pub token_reduction: f64,
    /// `1 - generated / full tokens`: the saving before paying for probes, in [0, 1].
    pub generated_reduction: f64,
    /// Probe tokens as a share of the full runs' tokens.
    pub probe_overhead: f64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::budget::Budget;
    use crate::rules::consistency::Consistency;
    use crate::trace::tests::sample;

    #[test]
    fn facts_score_every_checkpoint() {
        let t = sample();
        let f = TraceFacts::of(&t);
        assert_eq!(
            f.checkpoints.iter().map(|c| (c.em, c.agree)).collect::<Vec<_>>(),
            vec![(false, false), (true, true)]
        );
        assert!(f.full_em);
        assert_eq!(f.all_probe_tokens, 4);
        assert_eq!(f.oracle_stop(), Some(1));
    }

    #[test]
    fn outcome_counts_probes_by_rule_kind() {
        let f = TraceFacts::of(&sample());
        assert_eq!(
            f.outcome(Some(1), ProbeCharge::Every),
            Outcome { stop: Some(1), generated: 64, probe_tokens: 4, em: true, agree: true }
        );
        assert_eq!(f.outcome(Some(1), ProbeCharge::StopOnly).probe_tokens, 2);
        assert_eq!(f.outcome(None, ProbeCharge::Every).probe_tokens, 4);
        assert_eq!(
            f.outcome(None, ProbeCharge::StopOnly),
            Outcome { stop: None, generated: 80, probe_tokens: 0, em: true, agree: true }
        );
    }

    #[test]
    fn oracle_is_none_when_the_last_probe_disagrees() {
        let mut t = sample();
        t.checkpoints[1].answer = "5".into();
        assert_eq!(TraceFacts::of(&t).oracle_stop(), None);
    }

    #[test]
    fn max_probes_binds_as_in_serve() {
        let t = sample();
        let f = TraceFacts::of(&t);
        let consistency: PolicySpec = Consistency { window: 2, min_tokens: 0, hedge_filter: false }.into();
        // The sample's probes answer 3 then 4: a consistency run never forms, both are paid.
        let mut t2 = t.clone();
        t2.checkpoints[0].answer = "4".into();
        let f2 = TraceFacts::of(&t2);
        let unlimited = replay(&consistency, &t2, &f2, Limits { max_probes: u32::MAX });
        assert_eq!(unlimited, Outcome { stop: Some(1), generated: 64, probe_tokens: 4, em: true, agree: true });
        assert_eq!(replay(&consistency, &t2, &f2, Limits::default()), unlimited);
        // One probe only: the second checkpoint goes unprobed, so the run of two is never seen.
        let limited = replay(&consistency, &t2, &f2, Limits { max_probes: 1 });
        assert_eq!(limited, Outcome { stop: None, generated: 80, probe_tokens: 2, em: true, agree: true });
        // A budget needs one probe, where it stops; with none allowed it runs to the end.
        let budget: PolicySpec = Budget { max_tokens: 64 }.into();
        assert_eq!(replay(&budget, &t, &f, Limits { max_probes: 1 }).stop, Some(1));
        assert_eq!(replay(&budget, &t, &f, Limits { max_probes: 0 }), f.outcome(None, ProbeCharge::StopOnly));
        // And the figures change with it.
        let summary = |limits| {
            let mut tally = Tally::default();
            tally.add(&f2, &replay(&consistency, &t2, &f2, limits));
            tally.summary()
        };
        assert!(summary(Limits { max_probes: 1 }).token_reduction < summary(Limits::default()).token_reduction);
        assert!(Limits { max_probes: 1 }.may_bind(&t) && !Limits::default().may_bind(&t));
    }

    #[test]
    fn summary_accounts_tokens_honestly() {
        let t = sample();
        let f = TraceFacts::of(&t);
        let mut tally = Tally::default();
        tally.add(&f, &replay(&Budget { max_tokens: 32 }.into(), &t, &f, Limits::default()));
        let s = tally.summary();
        assert_eq!((s.em_full, s.em_stopped, s.agreement), (1.0, 0.0, 0.0));
        assert!((s.token_reduction - (1.0 - 34.0 / 80.0)).abs() < 1e-12);
        assert!((s.generated_reduction - 0.6).abs() < 1e-12);
        let mut never = Tally::default();
        never.add(&f, &replay(&PolicySpec::NEVER, &t, &f, Limits::default()));
        assert_eq!(never.summary().token_reduction, 0.0);
    }
}
