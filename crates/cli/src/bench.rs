//! `stopwise bench sweep`: the sweep's speed against a plain parse of the same traces and against
//! a straightforward numpy implementation (`bench/sweep_baseline.py`), all in the same run.

use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use stopwise_core::replay::TraceFacts;
use stopwise_core::sweep::{Family, Sweep};
use stopwise_core::trace::{Checkpoint, Final, ProbeSettings, Trace};
use stopwise_core::Task;
use stopwise_store::TraceReader;

/// splitmix64: a tiny seeded generator, enough for synthetic traces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// A synthetic trace whose probed answer settles on the final answer at a random point.
fn synthetic(rng: &mut Rng, index: usize, checkpoints: u32) -> Trace {
    let settle = (rng.next() % u64::from(checkpoints)) as u32;
    let final_answer = (rng.next() % 100).to_string();
    let checkpoints: Vec<Checkpoint> = (0..checkpoints)
        .map(|k| {
            let settled = k >= settle;
            let answer = if settled { final_answer.clone() } else { (rng.next() % 100).to_string() };
            let p = if settled { 0.6 + 0.4 * rng.unit() } else { rng.unit() };
            Checkpoint {
                tokens: 32 * (k + 1),
                answer,
                probe_text: String::new(),
                answer_tokens: 2 + (rng.next() % 4) as u32,
                mean_prob: p,
                min_prob: p * rng.unit(),
                segment_logprob: -3.0 * rng.unit() * (1.0 - p),
                segment_entropy: 2.0 * rng.unit(),
            }
        })
        .collect();
    let gold = if rng.unit() < 0.7 { final_answer.clone() } else { "x".into() };
    Trace {
        v: 1,
        id: format!("synthetic-{index}"),
        dataset: "synthetic".into(),
        task: Task::Numeric,
        question: None,
        gold: vec![gold],
        model: "synthetic".into(),
        prompt_tokens: 100,
        probe: ProbeSettings { suffix: "\n\nFinal answer: ".into(), max_tokens: 12, interval: 32 },
        final_: Final {
            tokens: 32 * checkpoints.len() as u32 + 16,
            answer: final_answer,
            finish_reason: "stop".into(),
            text: None,
            text_offsets: Vec::new(),
        },
        checkpoints,
    }
}

pub fn sweep(traces: usize, checkpoints: u32, thresholds: usize, seed: u64) -> Result<()> {
    let dir = tempfile_dir()?;
    let path = dir.join("synthetic.jsonl");
    let mut rng = Rng(seed);
    let mut out = BufWriter::new(std::fs::File::create(&path).with_context(|| path.display().to_string())?);
    for i in 0..traces {
        writeln!(out, "{}", synthetic(&mut rng, i, checkpoints).to_line())?;
    }
    out.flush()?;
    drop(out);
    println!(
        "machine: {} cores; {traces} synthetic traces x {checkpoints} checkpoints x {thresholds} thresholds x 4 families (seed {seed})",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );

    let started = Instant::now();
    let mut parsed = 0usize;
    for trace in TraceReader::open(&path)? {
        parsed += trace?.checkpoints.len();
    }
    let parse = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let mut sweep = Sweep::new(Family::DEFAULTS.iter().map(|f| (f.clone(), f.grid(thresholds, 32))));
    for trace in TraceReader::open(&path)? {
        let trace = trace?;
        sweep.add(&trace, &TraceFacts::of(&trace));
    }
    let report = sweep.finish();
    let parse_and_sweep = started.elapsed().as_secs_f64();

    // The sweep alone, on traces already in memory: what the numpy baseline times too.
    let in_memory: Vec<Trace> = TraceReader::open(&path)?.collect::<Result<_, _>>()?;
    let started = Instant::now();
    let mut sweep = Sweep::new(Family::DEFAULTS.iter().map(|f| (f.clone(), f.grid(thresholds, 32))));
    for trace in &in_memory {
        sweep.add(trace, &TraceFacts::of(trace));
    }
    let points = sweep.finish().points.len();
    let sweep_only = started.elapsed().as_secs_f64();

    println!("parse only:             {parse:8.3} s  ({parsed} checkpoints)");
    println!(
        "parse + sweep:          {parse_and_sweep:8.3} s  ({} points)  = {:.2}x parse",
        report.points.len(),
        parse_and_sweep / parse
    );
    println!("sweep only (in memory): {sweep_only:8.3} s  ({points} points)");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/sweep_baseline.py");
    let python = std::process::Command::new("python3").arg(&script).arg(&path).arg(thresholds.to_string()).output();
    match python {
        Ok(out) if out.status.success() => {
            let seconds: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().context("baseline output")?;
            println!("numpy baseline sweep:   {seconds:8.3} s  -> stopwise is {:.0}x faster", seconds / sweep_only);
        }
        Ok(out) => println!("numpy baseline failed: {}", String::from_utf8_lossy(&out.stderr).trim()),
        Err(e) => println!("numpy baseline not run (python3: {e})"),
    }
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}

fn tempfile_dir() -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("stopwise-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| dir.display().to_string())?;
    Ok(dir)
}
