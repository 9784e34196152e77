//! Properties of replay and sweeps on random traces: the sweep equals one replay per threshold,
//! higher thresholds never stop earlier, replay equals the streaming state machine, and the
//! token accounting stays in range.

use proptest::prelude::*;
use stopwise_core::certify::{p_value, upper_bound, PValue};
use stopwise_core::policy::{Decision, PolicySpec};
use stopwise_core::replay::{replay, Tally, TraceFacts};
use stopwise_core::sweep::{Family, Sweep};
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
                question: None,
                gold: if gold { vec!["4".into()] } else { vec![] },
                model: "m".into(),
                prompt_tokens: 10,
                probe: ProbeSettings { suffix: "\nFinal answer: ".into(), max_tokens: 8, interval: 32 },
                checkpoints,
                final_: Final { tokens, answer: final_answer.into(), finish_reason: "stop".into(), text: None },
            }
        },
    )
}

fn family_strategy() -> impl Strategy<Value = Family> {
    prop::sample::select(vec![
        Family::Budget,
        Family::Consistency { hedge_filter: true },
        Family::Consistency { hedge_filter: false },
        Family::Confidence,
        Family::LogprobWindow { window: 48 },
        Family::LogprobWindow { window: 128 },
    ])
}

proptest! {
    #[test]
    fn sweep_equals_replay_at_every_threshold(traces in prop::collection::vec(trace_strategy(), 1..8), family in family_strategy(), n in 1usize..40) {
        let grid = family.grid(n, 32);
        let mut sweep = Sweep::new([(family, grid)]);
        let facts: Vec<TraceFacts> = traces.iter().map(TraceFacts::of).collect();
        for (t, f) in traces.iter().zip(&facts) {
            sweep.add(t, f);
        }
        for point in sweep.finish().points {
            let mut tally = Tally::default();
            for (t, f) in traces.iter().zip(&facts) {
                tally.add(f, &replay(&point.policy, t, f));
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
            .map(|t| replay(&family.spec(t), &trace, &facts).stop.unwrap_or(usize::MAX))
            .collect();
        prop_assert!(stops.windows(2).all(|w| w[0] <= w[1]), "{:?}", stops);
    }

    #[test]
    fn replay_matches_the_streaming_state_machine(trace in trace_strategy(), family in family_strategy(), k in 0usize..64) {
        let grid = family.grid(64, 32);
        let spec = PolicySpec::Hybrid { floor: 64, cap: 256, rule: Box::new(family.spec(grid[k % grid.len()])) };
        let facts = TraceFacts::of(&trace);
        let mut rule = spec.start(trace.task);
        let streamed = trace.checkpoints.iter().map(|c| rule.observe(c)).position(|d| d == Decision::Stop);
        prop_assert_eq!(replay(&spec, &trace, &facts).stop, streamed);
    }

    #[test]
    fn token_accounting_stays_in_range(traces in prop::collection::vec(trace_strategy(), 1..8), family in family_strategy(), k in 0usize..64) {
        let grid = family.grid(64, 32);
        let spec = family.spec(grid[k % grid.len()]);
        let mut tally = Tally::default();
        let mut never = Tally::default();
        for t in &traces {
            let f = TraceFacts::of(t);
            tally.add(&f, &replay(&spec, t, &f));
            never.add(&f, &replay(&PolicySpec::Never, t, &f));
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
        let outcomes = family.outcomes(&trace, &facts, &grid);
        prop_assert_eq!(outcomes.len(), grid.len());
        for (t, outcome) in grid.iter().zip(outcomes) {
            prop_assert_eq!(outcome, replay(&family.spec(*t), &trace, &facts));
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
}
