//! Serve's default limits change nothing on the bundled traces: every family's sweep and every
//! preset replay the same under `Limits::default()` as without limits, so figures certified
//! before replay honoured `probe.max_probes` still describe serving with the default.

use std::path::PathBuf;

use stopwise_core::policy::presets;
use stopwise_core::replay::{replay, Limits, TraceFacts};
use stopwise_core::rules::Family;
use stopwise_core::sweep::Sweep;
use stopwise_core::trace::{parse_line, Trace};

#[test]
fn the_default_max_probes_changes_nothing_on_the_bundled_traces() {
    let bundled = |file: &str| -> Vec<Trace> {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/traces").join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        text.lines().filter(|l| !l.trim().is_empty()).map(|l| parse_line(l).unwrap()).collect()
    };
    let unlimited = Limits { max_probes: u32::MAX };
    for file in ["gsm8k.jsonl", "nq.jsonl"] {
        let traces = bundled(file);
        assert!(traces.iter().all(|t| !Limits::default().may_bind(t)), "{file}");
        let sweep = |limits| {
            let mut sweep = Sweep::new(Family::defaults().into_iter().map(|f| (f.clone(), f.grid(32, 32))), limits);
            for t in &traces {
                sweep.add(t, &TraceFacts::of(t));
            }
            sweep.finish()
        };
        assert_eq!(sweep(Limits::default()), sweep(unlimited), "{file}");
        for t in &traces {
            let facts = TraceFacts::of(t);
            for (name, spec, _) in presets() {
                assert_eq!(replay(&spec, t, &facts, Limits::default()), replay(&spec, t, &facts, unlimited), "{name}");
            }
        }
    }
}
