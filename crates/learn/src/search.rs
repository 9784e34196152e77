//! Choosing the training knobs: k-fold cross-validation grouped by trace over a grid or a random
//! sample of settings, scored by the area under the tokens-saved vs quality-loss curve.
//!
//! Each trace is scored by the fold model that did not see it; the out-of-fold scores of all
//! traces are then swept together over one threshold grid (pooled rather than averaged per fold:
//! with tens of traces per fold a per-fold curve is a handful of steps).

use std::str::FromStr;

use serde::Serialize;
use stopwise_core::replay::{ProbeCharge, Summary, Tally};
use stopwise_core::sweep::probability_grid;

use crate::data::TraceRows;
use crate::train::{train, Loss, Schedule, TrainConfig, TrainError};
use stopwise_core::rng::SplitMix64;

/// Thresholds of the curve a setting is scored on.
const CURVE_THRESHOLDS: usize = 200;

/// The quality axis of the selection curve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// EM drop against gold (the criterion; needs gold answers).
    Em,
    /// Share of items whose answer changed (needs no gold; finer on a weak model).
    Agreement,
}

impl Metric {
    /// The quality lost by a setting (negative when stopping helped).
    pub fn loss(self, s: &Summary) -> f64 {
        match self {
            Metric::Em => s.em_drop,
            Metric::Agreement => 1.0 - s.agreement,
        }
    }
}

impl FromStr for Metric {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "em" => Ok(Metric::Em),
            "agreement" => Ok(Metric::Agreement),
            _ => Err(format!("unknown metric `{s}`; metrics are: em, agreement")),
        }
    }
}

/// The stop points of every threshold on one trace's scores, added into `tallies` (one per
/// threshold). A learned rule probes at every checkpoint; unanswered checkpoints score -inf.
pub fn add_curve(rows: &TraceRows, scores: &[f64], thresholds: &[f64], tallies: &mut [Tally]) {
    for (t, tally) in thresholds.iter().zip(tallies.iter_mut()) {
        let stop = scores.iter().position(|s| s >= t);
        tally.add(&rows.facts, &rows.facts.outcome(stop, ProbeCharge::Every));
    }
}

/// Mean best token reduction over quality-loss budgets uniform in `[0, max_loss]`: the area
/// under the frontier of (loss, tokens saved), divided by `max_loss`. `floor` is the saving at
/// zero loss when no threshold qualifies: that of never stopping while still probing (negative).
///
/// The floor is not 0 ("switch the rule off") on purpose: when probes cost more than any stop
/// saves, every setting would then score 0 and the search could not tell them apart.
pub fn saving_area(summaries: &[Summary], metric: Metric, max_loss: f64, floor: f64) -> f64 {
    let mut points: Vec<(f64, f64)> =
        summaries.iter().map(|s| (metric.loss(s).max(0.0), s.token_reduction)).chain([(0.0, floor)]).collect();
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut area = 0.0;
    let mut best = f64::NEG_INFINITY;
    for (i, &(loss, saving)) in points.iter().enumerate() {
        if loss >= max_loss {
            break;
        }
        best = best.max(saving);
        let next = points.get(i + 1).map_or(max_loss, |p| p.0.min(max_loss));
        area += best * (next - loss);
    }
    area / max_loss
}

/// How settings are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    Grid,
    Random { trials: usize },
}

/// The settings a search tries, each a variation of `base`.
pub fn candidates(base: &TrainConfig, strategy: Strategy) -> Vec<TrainConfig> {
    match strategy {
        Strategy::Grid => {
            let mut out = Vec::new();
            for hidden in [vec![], vec![16]] {
                for loss in [Loss::Bce, Loss::WeightedBce { cost_ratio: 4.0 }, Loss::Focal { gamma: 2.0 }] {
                    for learning_rate in [0.003, 0.03] {
                        for l2 in [1e-4, 1e-2] {
                            out.push(TrainConfig { hidden: hidden.clone(), loss, learning_rate, l2, ..base.clone() });
                        }
                    }
                }
            }
            out
        }
        Strategy::Random { trials } => {
            let mut rng = SplitMix64::derive(base.seed, 10);
            let log_uniform =
                |rng: &mut SplitMix64, lo: f64, hi: f64| (lo.ln() + rng.unit() * (hi.ln() - lo.ln())).exp();
            (0..trials)
                .map(|_| {
                    let hidden = [vec![], vec![8], vec![16], vec![32], vec![16, 8]][rng.below(5)].clone();
                    let loss = match rng.below(3) {
                        0 => Loss::Bce,
                        1 => Loss::WeightedBce { cost_ratio: [2.0, 4.0, 8.0][rng.below(3)] },
                        _ => Loss::Focal { gamma: [0.5, 1.0, 2.0][rng.below(3)] },
                    };
                    TrainConfig {
                        hidden,
                        loss,
                        learning_rate: log_uniform(&mut rng, 1e-3, 1e-1),
                        l2: log_uniform(&mut rng, 1e-5, 1e-1),
                        schedule: [Schedule::Constant, Schedule::Step, Schedule::Cosine][rng.below(3)],
                        batch_size: [16, 32, 64, 128][rng.below(4)],
                        warmup_epochs: rng.below(4),
                        ..base.clone()
                    }
                })
                .collect()
        }
    }
}

/// One setting's cross-validated score.
#[derive(Debug, Clone, Serialize)]
pub struct Trial {
    pub config: TrainConfig,
    /// [`saving_area`] of the pooled out-of-fold curve.
    pub area: f64,
}

/// Fold of each trace: traces shuffled by `seed`, then dealt round-robin into `k` folds.
pub fn folds(traces: usize, k: usize, seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..traces).collect();
    SplitMix64::derive(seed, 20).shuffle(&mut order);
    let mut fold = vec![0; traces];
    for (position, &trace) in order.iter().enumerate() {
        fold[trace] = position % k.max(1);
    }
    fold
}

/// Cross-validates every candidate; returns the trials in candidate order.
pub fn cross_validate(
    rows: &[TraceRows],
    candidates: &[TrainConfig],
    k: usize,
    metric: Metric,
    max_loss: f64,
    mut progress: impl FnMut(usize, &Trial),
) -> Result<Vec<Trial>, TrainError> {
    if k < 2 || rows.len() < k {
        return Err(TrainError::Config(format!(
            "{k}-fold cross-validation needs k >= 2 and at least k traces ({} given)",
            rows.len()
        )));
    }
    let Some(first) = candidates.first() else {
        return Err(TrainError::Config("the search has no settings to try".into()));
    };
    let fold = folds(rows.len(), k, first.seed);
    let thresholds = probability_grid(CURVE_THRESHOLDS);
    let mut trials = Vec::new();
    for (c, config) in candidates.iter().enumerate() {
        let mut tallies = vec![Tally::default(); thresholds.len()];
        let mut never = Tally::default();
        for f in 0..k {
            let training: Vec<&TraceRows> = rows.iter().zip(&fold).filter(|(_, &g)| g != f).map(|(r, _)| r).collect();
            let model = train(&training, config)?.model;
            for (r, _) in rows.iter().zip(&fold).filter(|(_, &g)| g == f) {
                add_curve(r, &scores(&model, r), &thresholds, &mut tallies);
                never.add(&r.facts, &r.facts.outcome(None, ProbeCharge::Every));
            }
        }
        let summaries: Vec<Summary> = tallies.iter().map(Tally::summary).collect();
        let area = saving_area(&summaries, metric, max_loss, never.summary().token_reduction);
        let trial = Trial { config: config.clone(), area };
        progress(c, &trial);
        trials.push(trial);
    }
    Ok(trials)
}

/// The model's score of each checkpoint of a trace, as the `learned` rule computes it.
pub fn scores(model: &stopwise_core::learned::StopperModel, rows: &TraceRows) -> Vec<f64> {
    rows.features
        .iter()
        .zip(&rows.answered)
        .map(|(x, &answered)| if answered { model.score(x) } else { f64::NEG_INFINITY })
        .collect()
}

/// The best trial: largest area, the earliest candidate on ties.
pub fn best(trials: &[Trial]) -> Option<&Trial> {
    trials.iter().reduce(|best, t| if t.area > best.area { t } else { best })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(em_drop: f64, token_reduction: f64) -> Summary {
        Summary {
            items: 1,
            items_with_gold: 1,
            em_full: 1.0,
            em_stopped: 1.0 - em_drop,
            em_drop,
            agreement: 1.0,
            stopped_early: 1.0,
            tokens_full: 1,
            tokens_generated: 1,
            tokens_probe: 0,
            token_reduction,
            generated_reduction: token_reduction,
            probe_overhead: 0.0,
        }
    }

    #[test]
    fn area_integrates_the_frontier_step_function() {
        // Budgets [0, 0.02): 0.1; [0.02, 0.04): 0.3 (the 0.2 point is dominated).
        let s = [summary(0.0, 0.1), summary(0.02, 0.3), summary(0.03, 0.2), summary(0.5, 0.9)];
        assert!((saving_area(&s, Metric::Em, 0.04, 0.0) - 0.2).abs() < 1e-12);
        // A negative EM drop counts as no drop.
        assert!((saving_area(&[summary(-0.1, 0.4)], Metric::Em, 0.05, -0.3) - 0.4).abs() < 1e-12);
        // Below the first qualifying point the floor counts: half the budget at -0.3, half at -0.1.
        assert!((saving_area(&[summary(0.025, -0.1)], Metric::Em, 0.05, -0.3) - -0.2).abs() < 1e-12);
    }

    #[test]
    fn folds_are_balanced_and_seeded() {
        let f = folds(10, 3, 5);
        assert_eq!(f, folds(10, 3, 5));
        let sizes: Vec<usize> = (0..3).map(|k| f.iter().filter(|&&x| x == k).count()).collect();
        assert_eq!(sizes, vec![4, 3, 3]);
    }

    #[test]
    fn random_candidates_are_seeded_and_valid() {
        let base = TrainConfig { seed: 9, ..TrainConfig::default() };
        let a = candidates(&base, Strategy::Random { trials: 12 });
        assert_eq!(a, candidates(&base, Strategy::Random { trials: 12 }));
        assert!(a.iter().all(|c| c.check().is_ok()));
        assert!(candidates(&base, Strategy::Grid).iter().all(|c| c.check().is_ok()));
    }
}
