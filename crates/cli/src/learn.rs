//! `stopwise train` and `stopwise export-sft`.
//!
//! `train` fits the learned stopper (optionally choosing its knobs by grouped cross-validation),
//! writes the model file, and with `--test-fraction` compares it on held-out traces with every
//! hand rule family, the presets and the oracle. `export-sft` turns traces recorded with their
//! reasoning text into chat-format fine-tuning examples that teach the model to answer right when
//! stopped early. Rules name model files by path; core's policy loader reads them (see
//! [`stopwise_core::policy`]).

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::{json, Value};
use stopwise_core::answer;
use stopwise_core::learned::SharedModel;
use stopwise_core::policy::presets;
use stopwise_core::replay::{replay, Limits, Summary, Tally, TraceFacts};
use stopwise_core::rng::fnv1a;
use stopwise_core::rules::learned::LearnedFamily;
use stopwise_core::rules::{Family, PolicySpec};
use stopwise_core::sweep::{Sweep, SweepReport};
use stopwise_core::trace::Trace;
use stopwise_learn::search::{self, Metric, Strategy};
use stopwise_learn::{train, Label, Loss, Schedule, TraceRows, TrainConfig};

use crate::record::default_system_prompt;
use crate::report::{self, Row};

#[derive(Args)]
pub struct TrainArgs {
    /// Trace files (JSONL, optionally .gz/.zst); may be repeated.
    #[arg(long, required = true)]
    traces: Vec<PathBuf>,
    /// Where to write the model file.
    #[arg(long)]
    out: PathBuf,
    /// Seed of the initial weights, batches and splits (same seed, same model).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// What a positive checkpoint is: `agree` (probe equals the full answer) or `correct` (gold).
    #[arg(long, default_value = "agree")]
    label: Label,
    /// bce, weighted-bce or focal.
    #[arg(long, default_value = "bce")]
    loss: String,
    /// weighted-bce: how much more an early stop that changes the answer costs.
    #[arg(long, default_value_t = 4.0)]
    cost_ratio: f64,
    /// focal: the focusing exponent.
    #[arg(long, default_value_t = 2.0)]
    focal_gamma: f64,
    /// Hidden layer widths (comma-separated); none for logistic regression.
    #[arg(long, value_delimiter = ',')]
    hidden: Vec<usize>,
    /// Learning rate (Adam).
    #[arg(long, default_value_t = 0.01)]
    lr: f64,
    /// constant, step or cosine.
    #[arg(long, default_value = "cosine")]
    lr_schedule: Schedule,
    /// Epochs of linear learning-rate warm-up.
    #[arg(long, default_value_t = 2)]
    warmup_epochs: usize,
    /// L2 penalty on the weights.
    #[arg(long, default_value_t = 1e-3)]
    l2: f64,
    /// Checkpoints per gradient step.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Most passes over the training checkpoints.
    #[arg(long, default_value_t = 200)]
    epochs: usize,
    /// Early stopping: epochs without a better validation loss.
    #[arg(long, default_value_t = 20)]
    patience: usize,
    /// Share of the training traces held out for early stopping.
    #[arg(long, default_value_t = 0.2)]
    validation_fraction: f64,
    /// Choose loss, L2, learning rate, width (and with `random`, schedule and batch size) by
    /// grouped k-fold cross-validation: `grid` or `random`.
    #[arg(long)]
    search: Option<String>,
    /// Settings a random search tries.
    #[arg(long, default_value_t = 20)]
    trials: usize,
    /// Folds of the cross-validation (grouped by trace).
    #[arg(long, default_value_t = 5)]
    folds: usize,
    /// Quality axis of the selection curve: `em` (EM drop) or `agreement` (answer changed).
    #[arg(long, default_value = "em")]
    select_by: Metric,
    /// The selection area spans quality losses from 0 to this (0.05 = 5 points).
    #[arg(long, default_value_t = 0.05)]
    max_loss: f64,
    /// Hold out this share of the traces (by id, stable as files grow) and compare on it.
    #[arg(long)]
    test_fraction: Option<f64>,
    /// The comparison's quality budget: best saving with EM drop (and disagreement) at most this.
    #[arg(long, default_value_t = 0.01)]
    budget: f64,
    /// Thresholds per family in the comparison.
    #[arg(long, default_value_t = 200)]
    thresholds: usize,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct ExportSftArgs {
    /// Trace files recorded with `stopwise run --keep-text`; may be repeated.
    #[arg(long, required = true)]
    traces: Vec<PathBuf>,
    /// JSONL file of examples to write.
    #[arg(long)]
    out: PathBuf,
    /// System message (default: the one `stopwise run` uses for the trace's task).
    #[arg(long)]
    system_prompt: Option<String>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

fn read_traces(paths: &[PathBuf]) -> Result<Vec<Trace>> {
    crate::sources::open(paths, &Default::default()).collect()
}

/// Whether a trace is in the test split: decided by its id alone, so a trace file that grows
/// keeps its old traces on the same side.
fn in_test_split(id: &str, seed: u64, fraction: f64) -> bool {
    let h = fnv1a(id.bytes().chain(seed.to_le_bytes()));
    ((h >> 11) as f64 / (1u64 << 53) as f64) < fraction
}

impl TrainArgs {
    fn config(&self) -> Result<TrainConfig> {
        let loss = match self.loss.as_str() {
            "bce" => Loss::Bce,
            "weighted-bce" => Loss::WeightedBce { cost_ratio: self.cost_ratio },
            "focal" => Loss::Focal { gamma: self.focal_gamma },
            other => bail!("--loss `{other}`: losses are bce, weighted-bce, focal"),
        };
        let config = TrainConfig {
            label: self.label,
            hidden: self.hidden.clone(),
            loss,
            l2: self.l2,
            learning_rate: self.lr,
            schedule: self.lr_schedule,
            warmup_epochs: self.warmup_epochs,
            batch_size: self.batch_size,
            epochs: self.epochs,
            patience: self.patience,
            validation_fraction: self.validation_fraction,
            seed: self.seed,
        };
        config.check()?;
        Ok(config)
    }
}

pub fn train_command(args: &TrainArgs) -> Result<()> {
    let base = args.config()?;
    let strategy = match args.search.as_deref() {
        None => None,
        Some("grid") => Some(Strategy::Grid),
        Some("random") => Some(Strategy::Random { trials: args.trials.max(1) }),
        Some(other) => bail!("--search `{other}`: searches are grid, random"),
    };
    if let Some(f) = args.test_fraction {
        if !(0.0..1.0).contains(&f) || f == 0.0 {
            bail!("--test-fraction must be in (0, 1)");
        }
    }
    let traces = read_traces(&args.traces)?;
    let (test, training): (Vec<&Trace>, Vec<&Trace>) = match args.test_fraction {
        Some(f) => traces.iter().partition(|t| in_test_split(&t.id, args.seed, f)),
        None => (Vec::new(), traces.iter().collect()),
    };
    if training.is_empty() {
        bail!("no traces left for training");
    }
    let rows: Vec<TraceRows> = training.iter().map(|t| TraceRows::of(t)).collect();
    let metric = if args.select_by == Metric::Em && !rows.iter().any(|r| r.facts.has_gold) {
        eprintln!("no gold answers: selecting by agreement instead of EM drop");
        Metric::Agreement
    } else {
        args.select_by
    };

    let mut search_record = Value::Null;
    let config = match strategy {
        None => base.clone(),
        Some(strategy) => {
            let candidates = search::candidates(&base, strategy);
            eprintln!(
                "searching {} settings, {}-fold cross-validation over {} traces, by {:?} area up to {}",
                candidates.len(),
                args.folds,
                rows.len(),
                metric,
                args.max_loss
            );
            let trials = search::cross_validate(&rows, &candidates, args.folds, metric, args.max_loss, |i, t| {
                eprintln!("  [{:>3}] area {:+.4}  {}", i + 1, t.area, t.config.label_short());
            })?;
            let best = search::best(&trials).context("the search tried no settings")?.clone();
            eprintln!("best: area {:+.4}  {}", best.area, best.config.label_short());
            search_record = json!({
                "strategy": args.search, "folds": args.folds, "metric": metric, "max_loss": args.max_loss,
                "best_area": best.area, "trials": trials,
            });
            best.config
        }
    };
    let refs: Vec<&TraceRows> = rows.iter().collect();
    let trained = train(&refs, &config)?;
    let mut model = trained.model.clone();
    model.training = json!({
        "config": config,
        "traces": args.traces,
        "training_traces": rows.len(),
        "test_split": args.test_fraction.map(|f| json!({"fraction": f, "seed": args.seed, "traces": test.len()})),
        "run": trained,
        "search": search_record,
    });
    stopwise_store::write_file(&args.out, model.to_json().as_bytes())?;
    eprintln!(
        "model {} ({} examples, {} positive, best epoch {} of {}) written to {}",
        model.id,
        trained.examples,
        trained.positives,
        trained.best_epoch,
        trained.epochs_run,
        args.out.display()
    );
    if test.is_empty() {
        if args.json {
            println!("{}", json!({"model": args.out, "id": model.id}));
        }
        return Ok(());
    }
    compare(&training, &test, SharedModel::new(model), args)
}

/// The comparison on the test split: for each family, the best saving within the quality budget
/// (1) at the threshold best on the test split itself (the frontier, as every family gets) and
/// (2) at the threshold chosen on the training split (what one would deploy); presets; oracle.
fn compare(training: &[&Trace], test: &[&Trace], model: SharedModel, args: &TrainArgs) -> Result<()> {
    let mut families = Family::defaults();
    families.push(Family::Learned(LearnedFamily { model }));
    let on_test = sweep(test, &families, args.thresholds);
    let on_training = sweep(training, &families, args.thresholds);
    let test_facts: Vec<TraceFacts> = test.iter().map(|t| TraceFacts::of(t)).collect();
    let replay_on_test = |spec: &PolicySpec| {
        let mut tally = Tally::default();
        for (t, f) in test.iter().zip(&test_facts) {
            tally.add(f, &replay(spec, t, f, Limits::default()));
        }
        tally.summary()
    };
    let has_gold = test_facts.iter().any(|f| f.has_gold);
    let budgets: Vec<(&str, Metric)> = if has_gold {
        vec![("EM drop", Metric::Em), ("disagreement", Metric::Agreement)]
    } else {
        vec![("disagreement", Metric::Agreement)]
    };

    let mut sections = Vec::new();
    for (name, metric) in &budgets {
        let mut frontier_rows = Vec::new();
        let mut deployed_rows = Vec::new();
        for family in &families {
            if let Some(p) = best_within(&on_test, family.name(), *metric, args.budget) {
                frontier_rows.push(Row {
                    label: format!("{} {}", family.name(), p.label),
                    group: family.name().into(),
                    summary: p.summary,
                    on_frontier: false,
                });
            }
            if let Some(p) = best_within(&on_training, family.name(), *metric, args.budget) {
                deployed_rows.push(Row {
                    label: format!("{} {}", family.name(), p.label),
                    group: family.name().into(),
                    summary: replay_on_test(&p.policy),
                    on_frontier: false,
                });
            }
        }
        sections.push((
            format!("best threshold on the test split, {name} <= {:.1} pt", 100.0 * args.budget),
            frontier_rows,
        ));
        sections.push((
            format!("threshold chosen on the training split ({name} <= {:.1} pt there), on test", 100.0 * args.budget),
            deployed_rows,
        ));
    }
    let preset_rows: Vec<Row> = presets()
        .into_iter()
        .map(|(name, spec, _)| Row {
            label: name.into(),
            group: report::PRESET.into(),
            summary: replay_on_test(&spec),
            on_frontier: false,
        })
        .chain([Row {
            label: "oracle (bound)".into(),
            group: report::ORACLE.into(),
            summary: on_test.oracle,
            on_frontier: false,
        }])
        .collect();
    sections.push(("presets and oracle on the test split".into(), preset_rows));

    if args.json {
        let out: Vec<Value> = sections
            .iter()
            .map(|(title, rows)| {
                json!({"section": title, "rows": rows.iter().map(|r| json!({"rule": r.label, "summary": r.summary})).collect::<Vec<_>>()})
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(
                &json!({"training_traces": training.len(), "test_traces": test.len(), "sections": out})
            )?
        );
    } else {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "test split: {} traces (training: {}); seed {}", test.len(), training.len(), args.seed)?;
        for (title, rows) in &sections {
            writeln!(stdout, "\n## {title}")?;
            write!(stdout, "{}", report::table(rows))?;
        }
    }
    Ok(())
}

fn sweep(traces: &[&Trace], families: &[Family], thresholds: usize) -> SweepReport {
    let interval = traces.first().map_or(32, |t| t.probe.interval);
    let mut sweep = Sweep::new(families.iter().map(|f| (f.clone(), f.grid(thresholds, interval))), Limits::default());
    for t in traces {
        sweep.add(t, &TraceFacts::of(t));
    }
    sweep.finish()
}

/// The point of `family` with the largest token reduction whose quality loss is within budget.
fn best_within<'a>(
    report: &'a SweepReport,
    family: &str,
    metric: Metric,
    budget: f64,
) -> Option<&'a stopwise_core::sweep::Point> {
    let within = |s: &Summary| metric.loss(s) <= budget + 1e-12;
    report.points.iter().filter(|p| p.family.name() == family && within(&p.summary)).reduce(|best, p| {
        if p.summary.token_reduction > best.summary.token_reduction {
            p
        } else {
            best
        }
    })
}

pub fn export_sft_command(args: &ExportSftArgs) -> Result<()> {
    let traces = read_traces(&args.traces)?;
    let mut out = String::new();
    let (mut examples, mut used, mut no_gold) = (0usize, 0usize, 0usize);
    for trace in &traces {
        let lines = sft_examples(trace, args.system_prompt.as_deref())?;
        match lines {
            None => no_gold += 1,
            Some(lines) => {
                used += usize::from(!lines.is_empty());
                examples += lines.len();
                for line in lines {
                    out.push_str(&line.to_string());
                    out.push('\n');
                }
            }
        }
    }
    stopwise_store::write_file(&args.out, out.as_bytes())?;
    if args.json {
        println!(
            "{}",
            json!({"examples": examples, "traces": traces.len(), "traces_used": used, "traces_without_gold": no_gold, "out": args.out})
        );
    } else {
        println!(
            "{examples} examples from {used} of {} traces ({no_gold} without gold skipped) written to {}",
            traces.len(),
            args.out.display()
        );
    }
    Ok(())
}

/// Chat examples of one trace: at each checkpoint whose probe was wrong while the full answer
/// was right, the prompt and the reasoning so far, then the probe's suffix and the full answer.
/// `None` when the trace has no gold answer (right and wrong are unknown).
fn sft_examples(trace: &Trace, system_prompt: Option<&str>) -> Result<Option<Vec<Value>>> {
    let question = trace.question.as_deref().with_context(|| {
        format!(
            "trace `{}` has no question: export-sft needs traces recorded with `stopwise run --keep-text`",
            trace.id
        )
    })?;
    // Validation guarantees one offset per checkpoint whenever offsets were recorded.
    let offsets_recorded = !trace.final_.text_offsets.is_empty() || trace.checkpoints.is_empty();
    let Some(text) = trace.final_.text.as_deref().filter(|_| offsets_recorded) else {
        bail!(
            "trace `{}` has no reasoning text (`final.text` and `final.text_offsets`): record traces with `stopwise run --keep-text`",
            trace.id
        );
    };
    if trace.gold.is_empty() {
        return Ok(None);
    }
    let full_right = answer::exact_match(trace.task, &trace.final_.answer, &trace.gold);
    let system = system_prompt.unwrap_or(default_system_prompt(trace.task));
    let mut lines = Vec::new();
    for (c, &offset) in trace.checkpoints.iter().zip(&trace.final_.text_offsets) {
        if !full_right || answer::exact_match(trace.task, &c.answer, &trace.gold) {
            continue;
        }
        let reasoning = text.get(..offset as usize).unwrap_or(text);
        lines.push(json!({"messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": question},
            {"role": "assistant", "content": format!("{reasoning}{}{}", trace.probe.suffix, trace.final_.answer)},
        ]}));
    }
    Ok(Some(lines))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_split_is_stable_and_about_the_fraction() {
        let ids: Vec<String> = (0..2000).map(|i| format!("gsm8k-{i}")).collect();
        let test = ids.iter().filter(|id| in_test_split(id, 0, 0.3)).count();
        assert!((500..700).contains(&test), "{test}");
        assert!(ids.iter().all(|id| in_test_split(id, 0, 0.3) == in_test_split(id, 0, 0.3)));
        let other_seed = ids.iter().filter(|id| in_test_split(id, 1, 0.3) != in_test_split(id, 0, 0.3)).count();
        assert!(other_seed > 0);
    }
}
