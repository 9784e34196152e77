//! `stopwise bench sweep`: the sweep's speed against a plain parse of the same traces and against
//! a straightforward numpy implementation (`bench/sweep_baseline.py`), all in the same run.

use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use stopwise_core::replay::Limits;
use stopwise_core::replay::TraceFacts;
use stopwise_core::rng::SplitMix64;
use stopwise_core::rules::Family;
use stopwise_core::sweep::Sweep;
use stopwise_core::trace::{Checkpoint, Final, ProbeSettings, Trace};
use stopwise_core::Task;
use stopwise_store::TraceReader;

/// A synthetic trace whose probed answer settles on the final answer at a random point.
fn synthetic(rng: &mut SplitMix64, index: usize, checkpoints: u32) -> Trace {
    let settle = (rng.next_u64() % u64::from(checkpoints)) as u32;
    let final_answer = (rng.next_u64() % 100).to_string();
    let checkpoints: Vec<Checkpoint> = (0..checkpoints)
        .map(|k| {
            let settled = k >= settle;
            let answer = if settled { final_answer.clone() } else { (rng.next_u64() % 100).to_string() };
            let p = if settled { 0.6 + 0.4 * (rng.unit() as f32) } else { rng.unit() as f32 };
            Checkpoint {
                tokens: 32 * (k + 1),
                answer,
                probe_text: String::new(),
                answer_tokens: 2 + (rng.next_u64() % 4) as u32,
                mean_prob: p,
                min_prob: p * (rng.unit() as f32),
                segment_logprob: -3.0 * (rng.unit() as f32) * (1.0 - p),
                segment_entropy: 2.0 * (rng.unit() as f32),
            }
        })
        .collect();
    let gold = if (rng.unit() as f32) < 0.7 { final_answer.clone() } else { "x".into() };
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
        served: None,
        checkpoints,
    }
}

pub fn sweep(traces: usize, checkpoints: u32, thresholds: usize, seed: u64) -> Result<()> {
    let dir = tempfile_dir()?;
    let path = dir.join("synthetic.jsonl");
    let mut rng = SplitMix64::new(seed);
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
    let mut sweep = default_sweep(thresholds);
    for trace in TraceReader::open(&path)? {
        let trace = trace?;
        sweep.add(&trace, &TraceFacts::of(&trace));
    }
    let report = sweep.finish();
    let parse_and_sweep = started.elapsed().as_secs_f64();

    // The sweep alone, on traces already in memory: what the numpy baseline times too.
    let in_memory: Vec<Trace> = TraceReader::open(&path)?.collect::<Result<_, _>>()?;
    let started = Instant::now();
    let mut sweep = default_sweep(thresholds);
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

/// A sweep of every default family over `thresholds` thresholds, under serve's default limits.
fn default_sweep(thresholds: usize) -> Sweep {
    let families = Family::defaults().into_iter().map(|f| {
        let grid = f.grid(thresholds, 32);
        (f, grid)
    });
    Sweep::new(families, Limits::default())
}

/// `stopwise bench store`: `copies` × the file's traces, as served traces, written through the
/// writer serve uses (queue large enough that none is dropped, then a flush), against turning the
/// same traces into lines alone; traces/s and the ratio.
pub fn store(path: &Path, copies: usize, url: Option<String>) -> Result<String> {
    let traces: Vec<Trace> = stopwise_store::read_all(path)?;
    anyhow::ensure!(!traces.is_empty(), "{}: no traces", path.display());
    let scratch = tempfile::tempdir()?;
    let url = url.unwrap_or_else(|| format!("sqlite://{}", scratch.path().join("bench.db").display()));
    let served: Vec<Trace> = (0..copies.max(1))
        .flat_map(|copy| traces.iter().map(move |t| (copy, t)))
        .enumerate()
        .map(|(i, (copy, trace))| {
            let id = format!("bench-{copy}-{}", trace.id);
            Trace {
                served: Some(stopwise_core::Served {
                    route: "bench".into(),
                    response_id: id.clone(),
                    policy: "never".into(),
                    policy_version: "bench".into(),
                    started_ms: i as u64,
                    duration_ms: 0,
                    stopped_at: None,
                    delivered_tokens: trace.final_.tokens,
                    complete: true,
                    audit: false,
                }),
                id,
                ..trace.clone()
            }
        })
        .collect();
    let n = served.len();
    let started = Instant::now();
    let bytes: usize = served.iter().map(|t| t.to_line().len()).sum();
    let serialise = started.elapsed().as_secs_f64();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let (write, written) = runtime.block_on(async {
        let store = stopwise_db::Store::open(&url).await?;
        let writer = stopwise_db::Writer::start(store.clone(), n);
        let started = Instant::now();
        for trace in served {
            writer.submit(trace);
        }
        writer.flush().await;
        let elapsed = started.elapsed().as_secs_f64();
        let written = writer.stats().written.load(std::sync::atomic::Ordering::Relaxed);
        Ok::<_, anyhow::Error>((elapsed, written))
    })?;
    anyhow::ensure!(written == n as u64, "only {written} of {n} traces were written");
    let rate = |seconds: f64| n as f64 / seconds.max(1e-9);
    let mut out = String::new();
    use std::fmt::Write as _;
    writeln!(
        out,
        "{n} traces ({:.1} KiB each) into {}",
        bytes as f64 / n as f64 / 1024.0,
        stopwise_db::redacted(&url)
    )?;
    writeln!(out, "| step | seconds | traces/s | × serialising |")?;
    writeln!(out, "|---|---|---|---|")?;
    writeln!(out, "| serialise only | {serialise:.3} | {:.0} | 1.00 |", rate(serialise))?;
    writeln!(out, "| writer → store | {write:.3} | {:.0} | {:.2} |", rate(write), write / serialise.max(1e-9))?;
    Ok(out)
}
