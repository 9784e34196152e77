//! The trainer end to end on synthetic traces whose answer settles part-way: determinism for a
//! seed, that the model learns the settling signal, and that the grouped search is repeatable.
#![allow(clippy::unwrap_used)]

use stopwise_core::learned::StopperModel;
use stopwise_core::rng::SplitMix64;
use stopwise_core::trace::{Checkpoint, Final, ProbeSettings, Trace};
use stopwise_core::Task;
use stopwise_learn::search::{self, Metric, Strategy};
use stopwise_learn::{train, Loss, Schedule, TraceRows, TrainConfig};

/// Traces of 3-10 probes; the answer wanders, then settles on the final answer with a higher
/// probe confidence. Gold is the final answer for half of them.
fn synthetic(n: usize, seed: u64) -> Vec<TraceRows> {
    let mut rng = SplitMix64::new(seed);
    (0..n)
        .map(|i| {
            let probes = 3 + rng.below(8);
            let settle = rng.below(probes);
            let checkpoints: Vec<Checkpoint> = (0..probes)
                .map(|k| {
                    let settled = k >= settle;
                    let answer = if settled { "42".to_string() } else { format!("{}", rng.below(30)) };
                    let p = if settled { 0.6 + 0.4 * rng.unit() } else { 0.3 + 0.5 * rng.unit() } as f32;
                    Checkpoint {
                        tokens: 32 * (k as u32 + 1),
                        probe_text: answer.clone(),
                        answer,
                        answer_tokens: 3,
                        mean_prob: p,
                        min_prob: p / 2.0,
                        segment_logprob: -(rng.unit() as f32),
                        segment_entropy: rng.unit() as f32,
                    }
                })
                .collect();
            let trace = Trace {
                v: 1,
                id: format!("synthetic-{i}"),
                dataset: "synthetic".into(),
                task: Task::Numeric,
                question: Some("What is six times seven?".into()),
                gold: if i % 2 == 0 { vec!["42".into()] } else { vec![] },
                model: "m".into(),
                prompt_tokens: 30,
                probe: ProbeSettings { suffix: "\nFinal answer: ".into(), max_tokens: 8, interval: 32 },
                final_: Final {
                    tokens: 32 * probes as u32 + 10,
                    answer: "42".into(),
                    finish_reason: "stop".into(),
                    text: None,
                    text_offsets: Vec::new(),
                },
                served: None,
                checkpoints,
            };
            trace.validate().unwrap();
            TraceRows::of(&trace)
        })
        .collect()
}

fn fit(rows: &[TraceRows], config: &TrainConfig) -> StopperModel {
    train(&rows.iter().collect::<Vec<_>>(), config).unwrap().model
}

#[test]
fn training_is_deterministic_for_a_seed() {
    let rows = synthetic(60, 1);
    for config in [
        TrainConfig { seed: 7, epochs: 30, ..TrainConfig::default() },
        TrainConfig {
            seed: 7,
            epochs: 30,
            hidden: vec![8],
            loss: Loss::Focal { gamma: 2.0 },
            schedule: Schedule::Step,
            batch_size: 8,
            ..TrainConfig::default()
        },
    ] {
        let a = fit(&rows, &config);
        let b = fit(&rows, &config);
        assert_eq!(a, b);
        assert_eq!(a.to_json(), b.to_json(), "the written file is identical byte for byte");
        let other = fit(&rows, &TrainConfig { seed: 8, ..config.clone() });
        assert_ne!(a.layers, other.layers, "another seed gives another model");
        assert_eq!(StopperModel::from_json(&a.to_json()), Ok(a));
    }
}

#[test]
fn the_model_learns_when_the_answer_has_settled() {
    let rows = synthetic(80, 2);
    let test = synthetic(40, 3);
    for hidden in [vec![], vec![16]] {
        let model = fit(&rows, &TrainConfig { hidden: hidden.clone(), ..TrainConfig::default() });
        // Ranking quality on fresh traces: a random agreeing checkpoint should outscore a random
        // disagreeing one most of the time (AUC).
        let (mut pos, mut neg) = (Vec::new(), Vec::new());
        for r in &test {
            for (x, c) in r.features.iter().zip(&r.facts.checkpoints) {
                if c.agree {
                    pos.push(model.score(x))
                } else {
                    neg.push(model.score(x))
                }
            }
        }
        let wins: f64 = pos
            .iter()
            .flat_map(|p| {
                neg.iter().map(move |n| {
                    if p > n {
                        1.0
                    } else if p == n {
                        0.5
                    } else {
                        0.0
                    }
                })
            })
            .sum();
        let auc = wins / (pos.len() * neg.len()) as f64;
        assert!(auc > 0.85, "hidden {hidden:?}: AUC {auc}");
    }
}

#[test]
fn weighted_bce_makes_the_stopper_more_cautious() {
    let rows = synthetic(80, 4);
    let plain = fit(&rows, &TrainConfig::default());
    let cautious = fit(&rows, &TrainConfig { loss: Loss::WeightedBce { cost_ratio: 8.0 }, ..TrainConfig::default() });
    let mean_score = |m: &StopperModel| {
        let scores: Vec<f64> = rows.iter().flat_map(|r| r.features.iter().map(|x| m.score(x))).collect();
        scores.iter().sum::<f64>() / scores.len() as f64
    };
    assert!(mean_score(&cautious) < mean_score(&plain));
}

#[test]
fn grouped_search_is_repeatable_and_scores_the_curve() {
    let rows = synthetic(30, 5);
    let base = TrainConfig { epochs: 20, seed: 3, ..TrainConfig::default() };
    let candidates = search::candidates(&base, Strategy::Random { trials: 3 });
    let run = || search::cross_validate(&rows, &candidates, 3, Metric::Agreement, 0.05, |_, _| {}).unwrap();
    let (a, b) = (run(), run());
    assert_eq!(a.iter().map(|t| t.area).collect::<Vec<_>>(), b.iter().map(|t| t.area).collect::<Vec<_>>());
    assert!(a.iter().all(|t| (-1.0..=1.0).contains(&t.area)));
    assert!(search::best(&a).unwrap().area > 0.0, "settled answers can be stopped on without changing them");
    assert!(search::cross_validate(&rows[..2], &candidates, 3, Metric::Em, 0.05, |_, _| {}).is_err());
}
