//! Threshold sweeps and Pareto frontiers.
//!
//! A rule family with one monotone threshold (a higher threshold never stops earlier) stops, for
//! threshold `t`, at the first checkpoint whose score reaches `t`. So the stop point of *every*
//! threshold follows from one pass over a trace's prefix maxima, and each stop point's outcome is
//! added to the whole range of thresholds sharing it through a difference array. A sweep costs
//! O(checkpoints · log thresholds) per trace, not checkpoints × thresholds.

use std::ops::Range;

use serde::Serialize;

use crate::replay::{replay, Limits, Outcome, ProbeCharge, Summary, Tally, TraceFacts};
use crate::rules::{Family, PolicySpec};
use crate::trace::Trace;

impl Family {
    /// The outcome on one trace of every one of the (ascending) `thresholds`, in one pass (one
    /// replay per threshold where `limits` may bind on the trace).
    pub fn outcomes(&self, trace: &Trace, facts: &TraceFacts, thresholds: &[f64], limits: Limits) -> Vec<Outcome> {
        if limits.may_bind(trace) {
            return thresholds.iter().map(|&t| replay(&self.spec(t), trace, facts, limits)).collect();
        }
        let mut scores = Vec::new();
        self.scores(trace, facts, &mut scores);
        let mut out = Vec::with_capacity(thresholds.len());
        let charge = self.charge();
        for_each_stop(&scores, thresholds, |range, stop| {
            out.extend(std::iter::repeat_n(facts.outcome(stop, charge), range.len()));
        });
        self.for_each_extra_probe(trace, facts, &scores, thresholds, |range, tokens| {
            out[range].iter_mut().for_each(|o| o.probe_tokens += tokens);
        });
        out
    }
}

/// `n` probabilities (as `f32`, like a spec's threshold), evenly spaced in log-odds from -8 to 8:
/// scores of a trained model pile up near 0 and 1, where a linear grid would be too coarse.
pub fn probability_grid(n: usize) -> Vec<f64> {
    let n = n.max(1);
    let mut grid: Vec<f64> = (0..n)
        .map(|k| {
            let logit = -8.0 + 16.0 * k as f64 / (n.max(2) - 1) as f64;
            f64::from(crate::learned::sigmoid(logit) as f32)
        })
        .collect();
    grid.dedup();
    grid
}

/// Accumulates a sweep of several families over traces fed one at a time.
#[derive(Debug, Clone)]
pub struct Sweep {
    families: Vec<FamilySweep>,
    limits: Limits,
    oracle: Tally,
    scores: Vec<f64>,
}

#[derive(Debug, Clone)]
struct FamilySweep {
    family: Family,
    thresholds: Vec<f64>,
    /// Difference array over threshold indices (one extra slot for the end).
    diff: Vec<Tally>,
}

/// One threshold of one family, with what it did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Point {
    pub family: Family,
    pub threshold: f64,
    pub policy: PolicySpec,
    pub label: String,
    pub summary: Summary,
}

/// A finished sweep.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SweepReport {
    pub points: Vec<Point>,
    /// The oracle stopper: the bound at zero agreement loss.
    pub oracle: Summary,
}

impl Sweep {
    /// A sweep of `families`, each over its own ascending `thresholds`, under serve's `limits`.
    pub fn new(families: impl IntoIterator<Item = (Family, Vec<f64>)>, limits: Limits) -> Self {
        let families = families
            .into_iter()
            .map(|(family, thresholds)| FamilySweep {
                diff: vec![Tally::default(); thresholds.len() + 1],
                family,
                thresholds,
            })
            .collect();
        Sweep { families, limits, oracle: Tally::default(), scores: Vec::new() }
    }

    /// Adds one trace to every family's sweep and to the oracle.
    pub fn add(&mut self, trace: &Trace, facts: &TraceFacts) {
        self.oracle.add(facts, &oracle_outcome(facts));
        for fs in &mut self.families {
            let diff = &mut fs.diff;
            if self.limits.may_bind(trace) {
                for (k, &threshold) in fs.thresholds.iter().enumerate() {
                    let outcome = replay(&fs.family.spec(threshold), trace, facts, self.limits);
                    diff[k].add_scaled(facts, &outcome, 1);
                    diff[k + 1].add_scaled(facts, &outcome, -1);
                }
                continue;
            }
            fs.family.scores(trace, facts, &mut self.scores);
            let charge = fs.family.charge();
            for_each_stop(&self.scores, &fs.thresholds, |range, stop| {
                let outcome = facts.outcome(stop, charge);
                diff[range.start].add_scaled(facts, &outcome, 1);
                diff[range.end].add_scaled(facts, &outcome, -1);
            });
            fs.family.for_each_extra_probe(trace, facts, &self.scores, &fs.thresholds, |range, tokens| {
                diff[range.start].probe_tokens += tokens as i64;
                diff[range.end].probe_tokens -= tokens as i64;
            });
        }
    }

    pub fn finish(self) -> SweepReport {
        let mut points = Vec::new();
        for fs in self.families {
            let mut running = Tally::default();
            for (k, &threshold) in fs.thresholds.iter().enumerate() {
                running.merge(&fs.diff[k]);
                let policy = fs.family.spec(threshold);
                points.push(Point {
                    family: fs.family.clone(),
                    threshold,
                    label: policy.label(),
                    policy,
                    summary: running.summary(),
                });
            }
        }
        SweepReport { points, oracle: self.oracle.summary() }
    }
}

/// Walks a trace's checkpoint `scores` once and calls `each(range, stop)` for every run of
/// (ascending) `thresholds` indices that stop at the same checkpoint: threshold `t` stops at the
/// first checkpoint whose score is at least `t`, and `stop` is `None` for thresholds never reached.
/// Together the ranges cover every threshold exactly once, in order.
fn for_each_stop(scores: &[f64], thresholds: &[f64], mut each: impl FnMut(Range<usize>, Option<usize>)) {
    let mut best = f64::NEG_INFINITY;
    let mut done = 0; // thresholds below index `done` have stopped already
    for (i, &score) in scores.iter().enumerate() {
        if score <= best {
            continue;
        }
        best = score;
        let reached = thresholds.partition_point(|&t| t <= best);
        if reached > done {
            each(done..reached, Some(i));
            done = reached;
        }
    }
    if done < thresholds.len() {
        each(done..thresholds.len(), None);
    }
}

/// The oracle's outcome on one trace: it stops where the answer has settled and pays one probe.
pub fn oracle_outcome(facts: &TraceFacts) -> Outcome {
    facts.outcome(facts.oracle_stop(), ProbeCharge::StopOnly)
}

/// Indices of the points on the Pareto frontier of (token reduction ↑, quality ↑), where quality
/// is EM after stopping when items have gold, agreement with the full answer otherwise. Sorted by
/// token reduction.
pub fn pareto_frontier(summaries: &[Summary]) -> Vec<usize> {
    let quality = |s: &Summary| if s.items_with_gold > 0 { s.em_stopped } else { s.agreement };
    let mut order: Vec<usize> = (0..summaries.len()).collect();
    // Best saving first; among equal savings the best quality first, so a dominated twin is skipped.
    order.sort_by(|&a, &b| {
        let (sa, sb) = (&summaries[a], &summaries[b]);
        sb.token_reduction.total_cmp(&sa.token_reduction).then(quality(sb).total_cmp(&quality(sa)))
    });
    let mut frontier = Vec::new();
    let mut best_quality = f64::NEG_INFINITY;
    for i in order {
        let q = quality(&summaries[i]);
        if q > best_quality {
            best_quality = q;
            frontier.push(i);
        }
    }
    frontier.reverse();
    frontier
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::tests::sample;

    fn sweep_one(trace: &Trace, family: Family, thresholds: Vec<f64>) -> SweepReport {
        let mut s = Sweep::new([(family, thresholds)], Limits::default());
        s.add(trace, &TraceFacts::of(trace));
        s.finish()
    }

    #[test]
    fn sweep_points_equal_individual_replays() {
        let t = sample();
        let f = TraceFacts::of(&t);
        for family in Family::defaults() {
            let grid = family.grid(40, 32);
            for p in sweep_one(&t, family, grid).points {
                let mut tally = Tally::default();
                tally.add(&f, &replay(&p.policy, &t, &f, Limits::default()));
                assert_eq!(p.summary, tally.summary(), "{}", p.label);
            }
        }
    }

    #[test]
    fn grids_are_ascending_and_round_trip_through_specs() {
        for family in Family::defaults() {
            let grid = family.grid(256, 32);
            assert!(grid.windows(2).all(|w| w[0] < w[1]), "{family:?}");
            for &t in &grid {
                let back = match family.spec(t) {
                    PolicySpec::Budget(budget) => f64::from(budget.max_tokens),
                    PolicySpec::Consistency(consistency) => f64::from(consistency.window),
                    PolicySpec::Confidence(confidence) => f64::from(confidence.threshold),
                    PolicySpec::LogprobWindow(window) => f64::from(window.threshold),
                    other => panic!("unexpected {other:?}"),
                };
                assert_eq!(back, t);
            }
        }
    }

    #[test]
    fn pareto_keeps_only_undominated_points() {
        let base = {
            let t = sample();
            let mut tally = Tally::default();
            tally.add(&TraceFacts::of(&t), &TraceFacts::of(&t).outcome(None, ProbeCharge::StopOnly));
            tally.summary()
        };
        let point = |reduction: f64, em: f64| Summary { token_reduction: reduction, em_stopped: em, ..base };
        let points = [point(0.1, 0.9), point(0.2, 0.8), point(0.15, 0.7), point(0.2, 0.85), point(0.0, 0.9)];
        assert_eq!(pareto_frontier(&points), vec![0, 3]);
    }
}
