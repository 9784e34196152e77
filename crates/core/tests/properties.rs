//! Properties of replay and sweeps on random traces: the sweep equals one replay per threshold,
//! higher thresholds never stop earlier, replay equals the streaming state machine, and the
//! token accounting stays in range; the learned stopper's features never look ahead, and its
//! online rule stops where the batch features say.

use proptest::prelude::*;
use stopwise_core::certify::{p_value, upper_bound, PValue};
use stopwise_core::features::{
    trace_features, FeatureState, RequestInfo, FEATURES, FEATURE_NAMES, FEATURE_SCHEMA_VERSION,
};
use stopwise_core::learned::{Dense, SharedModel, StopperModel, MODEL_FORMAT};
use stopwise_core::policy::Files;
use stopwise_core::replay::{replay, Limits, Tally, TraceFacts};
use stopwise_core::rules::combine::{All, Any};
use stopwise_core::rules::consistency::ConsistencyFamily;
use stopwise_core::rules::hybrid::Hybrid;
use stopwise_core::rules::learned::Learned;
use stopwise_core::rules::logprob_window::LogprobWindowFamily;
use stopwise_core::rules::{Decision, Family, PolicySpec};
use stopwise_core::sweep::Sweep;
use stopwise_core::trace::{Checkpoint, Final, ProbeSettings, Trace};
use stopwise_core::Task;

fn trace_strategy() -> impl Strategy<Value = Trace> {
    let checkpoint = (prop::sample::select(vec!["", "3", "4", "5", "wait 4"]), 0u32..8, 0.0f32..=1.0, -4.0f32..=0.0);
    (prop::collection::vec(checkpoint, 0..12), 0u32..40, prop::sample::select(vec!["4", "5"]), any::<bool>()).prop_map(
        |(cps, tail, final_answer, gold)| {
            let checkpoints: Vec<Checkpoint> = cps
                .into_iter()
                .enumerate()
                .map(|(i, (answer, answer_tokens, p, lp))| Checkpoint {
                    tokens: 32 * (i as u32 + 1),
                    answer: answer.trim_start_matches("wait ").into(),
                    probe_text: answer.into(),
                    answer_tokens,
                    mean_prob: p,
                    min_prob: p / 2.0,
                    segment_logprob: lp,
                    segment_entropy: -lp,
                })
                .collect();
            let tokens = 32 * checkpoints.len() as u32 + tail + 1;
            Trace {
                v: 1,
                id: "t".into(),
                dataset: "synthetic".into(),
                task: Task::Numeric,
                question: gold.then(|| "What is two plus two?".into()),
                gold: if gold { vec!["4".into()] } else { vec![] },
                model: "m".into(),
                prompt_tokens: 10,
                probe: ProbeSettings { suffix: "\nFinal answer: ".into(), max_tokens: 8, interval: 32 },
                checkpoints,
                final_: Final {
                    tokens,
                    answer: final_answer.into(),
                    finish_reason: "stop".into(),
                    text: None,
                    text_offsets: Vec::new(),
                },
                served: None,
            }
        },
    )
}

/// A learned model with every weight non-zero, so that every feature moves its score.
fn dense_model() -> SharedModel {
    let weights: Vec<f32> = (0..FEATURES).map(|i| ((i as f32) * 1.7).sin()).collect();
    SharedModel::new(StopperModel {
        format: MODEL_FORMAT.into(),
        schema_version: FEATURE_SCHEMA_VERSION,
        features: FEATURE_NAMES.iter().map(|n| n.to_string()).collect(),
        id: "dense".into(),
        label: "agree".into(),
        input_mean: vec![0.5; FEATURES],
        input_scale: vec![2.0; FEATURES],
        layers: vec![
            Dense { inputs: FEATURES, outputs: 2, weights: [weights.clone(), weights].concat(), bias: vec![0.1, -0.1] },
            Dense { inputs: 2, outputs: 1, weights: vec![1.5, -0.5], bias: vec![0.2] },
        ],
        training: serde_json::Value::Null,
    })
}

/// Every registered family (the learned one over `dense_model`, named by a file as on a command
/// line), and two more settings of the hand rules.
fn registered_families() -> Vec<Family> {
    let model = dense_model().to_json();
    let read = move |_: &std::path::Path| -> std::io::Result<Option<String>> { Ok(Some(model.clone())) };
    let files = Files::read_with(&read, "");
    Family::NAMES
        .iter()
        .map(|name| {
            // A family without a default takes a file: a model is all a file here can be.
            Family::parse(name, &files)
                .or_else(|_| Family::parse(&format!("{name}:dense.json"), &files))
                .unwrap_or_else(|e| panic!("{name}: {e}"))
        })
        .chain([
            Family::Consistency(ConsistencyFamily { hedge_filter: false }),
            Family::LogprobWindow(LogprobWindowFamily { window: 48 }),
        ])
        .collect()
}

fn family_strategy() -> impl Strategy<Value = Family> {
    prop::sample::select(registered_families())
}

/// Any rule: a family's setting, alone, inside a hybrid, or combined with a second one.
fn spec_strategy() -> impl Strategy<Value = PolicySpec> {
    let setting = || {
        (family_strategy(), 0usize..16).prop_map(|(family, k)| {
            let grid = family.grid(16, 32);
            family.spec(grid[k % grid.len()])
        })
    };
    (setting(), setting(), 0u8..4, 0u32..300, 0u32..400).prop_map(|(a, b, shape, floor, cap)| match shape {
        0 => a,
        1 => Hybrid { floor, cap: floor + cap, rule: Box::new(a) }.into(),
        2 => Any { rules: vec![a, b] }.into(),
        _ => All { rules: vec![a, b] }.into(),
    })
}

/// The checkpoint as an online request sees it before probing: generation only.
fn unprobed(c: &Checkpoint) -> Checkpoint {
    Checkpoint {
        answer: String::new(),
        probe_text: String::new(),
        answer_tokens: 0,
        mean_prob: 0.0,
        min_prob: 0.0,
        ..c.clone()
    }
}

proptest! {
    #[test]
    fn probing_only_where_the_rule_asks_changes_no_decision(trace in trace_strategy(), spec in spec_strategy()) {
        // Online, a request probes only where `needs_probe` says so: its decisions must equal
        // replay's, which sees every probe, and replay pays for exactly those probes.
        let facts = TraceFacts::of(&trace);
        let mut online = spec.start_request(RequestInfo::of(&trace));
        let mut paid = 0u64;
        let mut stop = None;
        for (i, c) in trace.checkpoints.iter().enumerate() {
            let needs = online.needs_probe(c);
            let seen = if needs { c.clone() } else { unprobed(c) };
            paid += if needs { u64::from(c.answer_tokens) } else { 0 };
            if online.decide(&seen) == Decision::Stop {
                stop = Some(i);
                break;
            }
        }
        let replayed = replay(&spec, &trace, &facts, Limits::default());
        prop_assert_eq!(replayed.stop, stop, "{}", spec.label());
        prop_assert_eq!(replayed.probe_tokens, paid);
        prop_assert!(paid <= facts.all_probe_tokens);
    }

    #[test]
    fn sweep_equals_replay_at_every_threshold(traces in prop::collection::vec(trace_strategy(), 1..8), family in family_strategy(), n in 1usize..40) {
        let grid = family.grid(n, 32);
        let mut sweep = Sweep::new([(family, grid)], Limits::default());
        let facts: Vec<TraceFacts> = traces.iter().map(TraceFacts::of).collect();
        for (t, f) in traces.iter().zip(&facts) {
            sweep.add(t, f);
        }
        for point in sweep.finish().points {
            let mut tally = Tally::default();
            for (t, f) in traces.iter().zip(&facts) {
                tally.add(f, &replay(&point.policy, t, f, Limits::default()));
            }
            prop_assert_eq!(point.summary, tally.summary(), "{}", point.label);
        }
    }

    #[test]
    fn higher_threshold_never_stops_earlier(trace in trace_strategy(), family in family_strategy()) {
        let facts = TraceFacts::of(&trace);
        let stops: Vec<usize> = family
            .grid(64, 32)
            .into_iter()
            .map(|t| replay(&family.spec(t), &trace, &facts, Limits::default()).stop.unwrap_or(usize::MAX))
            .collect();
        prop_assert!(stops.windows(2).all(|w| w[0] <= w[1]), "{:?}", stops);
    }

    #[test]
    fn replay_matches_the_streaming_state_machine(trace in trace_strategy(), family in family_strategy(), k in 0usize..64) {
        let grid = family.grid(64, 32);
        let spec: PolicySpec = Hybrid { floor: 64, cap: 256, rule: Box::new(family.spec(grid[k % grid.len()])) }.into();
        let facts = TraceFacts::of(&trace);
        let mut rule = spec.start_request(RequestInfo::of(&trace));
        let streamed = trace.checkpoints.iter().map(|c| rule.observe(c)).position(|d| d == Decision::Stop);
        prop_assert_eq!(replay(&spec, &trace, &facts, Limits::default()).stop, streamed);
    }

    #[test]
    fn token_accounting_stays_in_range(traces in prop::collection::vec(trace_strategy(), 1..8), family in family_strategy(), k in 0usize..64) {
        let grid = family.grid(64, 32);
        let spec = family.spec(grid[k % grid.len()]);
        let mut tally = Tally::default();
        let mut never = Tally::default();
        for t in &traces {
            let f = TraceFacts::of(t);
            tally.add(&f, &replay(&spec, t, &f, Limits::default()));
            never.add(&f, &replay(&PolicySpec::NEVER, t, &f, Limits::default()));
        }
        let s = tally.summary();
        prop_assert!((0.0..=1.0).contains(&s.generated_reduction));
        prop_assert!(s.token_reduction <= s.generated_reduction);
        prop_assert!((s.generated_reduction - s.token_reduction - s.probe_overhead).abs() < 1e-9);
        prop_assert_eq!(never.summary().token_reduction, 0.0);
        prop_assert_eq!(never.summary().generated_reduction, 0.0);
    }

    #[test]
    fn family_outcomes_equal_one_replay_per_threshold(trace in trace_strategy(), family in family_strategy(), n in 1usize..40) {
        let facts = TraceFacts::of(&trace);
        let grid = family.grid(n, 32);
        let outcomes = family.outcomes(&trace, &facts, &grid, Limits::default());
        prop_assert_eq!(outcomes.len(), grid.len());
        for (t, outcome) in grid.iter().zip(outcomes) {
            prop_assert_eq!(outcome, replay(&family.spec(*t), &trace, &facts, Limits::default()));
        }
    }

    #[test]
    fn replay_under_max_probes_is_what_serve_does(trace in trace_strategy(), spec in spec_strategy(), max_probes in 0u32..14) {
        // Serve (`session.rs`) asks for at most `max_probes` probes; at a checkpoint not probed
        // the rule is fed it unprobed and cannot stop there.
        let limits = Limits { max_probes };
        let facts = TraceFacts::of(&trace);
        let mut online = spec.start_request(RequestInfo::of(&trace));
        let (mut asked, mut paid, mut stop) = (0, 0u64, None);
        for (i, c) in trace.checkpoints.iter().enumerate() {
            if !online.needs_probe(c) || asked >= max_probes {
                online.decide(&unprobed(c));
                continue;
            }
            asked += 1;
            paid += u64::from(c.answer_tokens);
            if online.decide(c) == Decision::Stop {
                stop = Some(i);
                break;
            }
        }
        let replayed = replay(&spec, &trace, &facts, limits);
        prop_assert_eq!(replayed.stop, stop, "{}", spec.label());
        prop_assert_eq!(replayed.probe_tokens, paid);
    }

    #[test]
    fn sweep_equals_replay_under_max_probes(traces in prop::collection::vec(trace_strategy(), 1..6), family in family_strategy(), n in 1usize..20, max_probes in 0u32..14) {
        let limits = Limits { max_probes };
        let grid = family.grid(n, 32);
        let mut sweep = Sweep::new([(family.clone(), grid.clone())], limits);
        let facts: Vec<TraceFacts> = traces.iter().map(TraceFacts::of).collect();
        for (t, f) in traces.iter().zip(&facts) {
            sweep.add(t, f);
            prop_assert_eq!(family.outcomes(t, f, &grid, limits), grid.iter().map(|&g| replay(&family.spec(g), t, f, limits)).collect::<Vec<_>>());
        }
        for point in sweep.finish().points {
            let mut tally = Tally::default();
            for (t, f) in traces.iter().zip(&facts) {
                tally.add(f, &replay(&point.policy, t, f, limits));
            }
            prop_assert_eq!(point.summary, tally.summary(), "{}", point.label);
        }
    }

    #[test]
    fn p_values_are_monotone(n in 1u64..2000, losses_share in 0.0f64..0.3, eps in 0.001f64..0.5, hb in any::<bool>()) {
        let kind = if hb { PValue::HoeffdingBentkus } else { PValue::Binomial };
        let losses = (n as f64 * losses_share) as u64;
        let p = p_value(kind, n, losses, eps);
        prop_assert!((0.0..=1.0).contains(&p));
        // More losses never make the evidence stronger; a looser epsilon never makes it weaker.
        prop_assert!(p_value(kind, n, losses + 1, eps) >= p * (1.0 - 1e-12));
        prop_assert!(p_value(kind, n, losses, (eps * 1.5).min(0.99)) <= p * (1.0 + 1e-12));
        let bound = upper_bound(kind, n, losses, 0.05);
        prop_assert!(bound >= losses as f64 / n as f64 && bound <= 1.0);
    }

    #[test]
    fn features_online_equal_features_in_replay(trace in trace_strategy(), cut in 0usize..12) {
        // Online, a request is cut off at some checkpoint and its final answer is unknown: the
        // vectors computed so far must equal the replayed ones of the whole trace.
        let batch = trace_features(&trace);
        let mut online = FeatureState::new(RequestInfo::of(&trace));
        let cut = cut.min(trace.checkpoints.len());
        for (c, replayed) in trace.checkpoints[..cut].iter().zip(&batch) {
            prop_assert_eq!(&online.push(c), replayed);
        }
        let mut truncated = trace.clone();
        truncated.checkpoints.truncate(cut);
        truncated.final_.answer = "something else".into();
        prop_assert_eq!(&trace_features(&truncated)[..], &batch[..cut]);
    }

    #[test]
    fn learned_rule_online_stops_where_batch_scores_say(trace in trace_strategy(), threshold in 0.0f32..=1.0) {
        let model = dense_model();
        let spec: PolicySpec = Learned { model: model.clone(), threshold }.into();
        let mut rule = spec.start_request(RequestInfo::of(&trace));
        let online = trace.checkpoints.iter().position(|c| rule.observe(c) == Decision::Stop);
        let batch = trace_features(&trace)
            .iter()
            .zip(&trace.checkpoints)
            .position(|(x, c)| !c.answer.is_empty() && model.score(x) >= f64::from(threshold));
        prop_assert_eq!(online, batch);
    }
}

#[test]
fn learned_spec_round_trips_and_refuses_a_mismatched_schema() {
    let spec: PolicySpec = Learned { model: dense_model(), threshold: 0.75 }.into();
    let json = serde_json::to_string(&spec).unwrap();
    assert_eq!(PolicySpec::parse(&json), Ok(spec.clone()));
    assert_eq!(spec.label(), "learned(dense,0.75)");
    let err = PolicySpec::parse(&json.replace("\"schema_version\":1", "\"schema_version\":2")).unwrap_err().to_string();
    assert!(err.contains("feature schema v2") && err.contains("retrain"), "{err}");
    let err = PolicySpec::parse(&json.replace("0.75", "1.5")).unwrap_err().to_string();
    assert!(err.contains("threshold"), "{err}");
}
