//! `stopwise`: the command line. Thin: parsing arguments and printing; the work is in the crates.

mod bench;
mod calibrate;
mod dataset;
mod learn;
mod model;
mod record;
mod report;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use serde_json::json;
use stopwise_core::answer::{self, Task};
use stopwise_core::certify::{Method, PValue, Risk, Settings};
use stopwise_core::policy::PolicySpec;
use stopwise_core::replay::{replay, Tally, TraceFacts};
use stopwise_core::sweep::{pareto_frontier, Family, Sweep, SweepReport};
use stopwise_core::trace::ProbeSettings;
use stopwise_engine::{resolve_model, Engine, LlamaConfig, LlamaEngine};
use stopwise_store::TraceReader;

use crate::report::Row;

#[derive(Parser)]
#[command(name = "stopwise", version, about = "Early stopping for reasoning LLMs, with the EM cost measured.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Fetch the model, record traces on a bundled GSM8K sample, replay every rule and write a report.
    #[command(after_help = "Example:\n  stopwise demo --limit 10")]
    Demo {
        /// Items of the bundled sample to record (it has 30).
        #[arg(long, default_value_t = 30)]
        limit: usize,
        #[arg(long, default_value = "stopwise-demo")]
        out_dir: PathBuf,
        /// Model name (see `stopwise model list`) or GGUF file (default: smollm2-135m).
        #[arg(long, value_name = "NAME|FILE")]
        model: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Benchmarks (engine benchmarks: `cargo bench -p stopwise-engine`).
    Bench {
        #[command(subcommand)]
        action: BenchAction,
    },
    /// Manage the embedded model.
    Model {
        #[command(subcommand)]
        action: ModelAction,
    },
    /// Record full runs with probes on a dataset, as trace v1 JSONL (resumable).
    #[command(
        after_help = "Example:\n  stopwise run --dataset ../shared/data/gsm8k_test_500.jsonl --task numeric --limit 20 --out traces.jsonl"
    )]
    Run {
        #[arg(long)]
        dataset: PathBuf,
        #[arg(long)]
        task: Task,
        #[arg(long, value_enum)]
        format: Option<dataset::Format>,
        #[arg(long)]
        limit: Option<usize>,
        #[arg(long, default_value_t = 32)]
        probe_interval: u32,
        #[arg(long, default_value = record::DEFAULT_PROBE_SUFFIX)]
        probe_suffix: String,
        #[arg(long, default_value_t = 12)]
        probe_max_tokens: u32,
        #[arg(long, default_value_t = 512)]
        max_tokens: u32,
        /// Sequences decoded together.
        #[arg(long, default_value_t = 4)]
        parallel: u32,
        /// CPU threads for llama.cpp (default: every core). One thread per process degrades more
        /// gracefully when other work shares the cores.
        #[arg(long)]
        threads: Option<u32>,
        #[arg(long)]
        system_prompt: Option<String>,
        /// Model name (see `stopwise model list`) or GGUF file (default: smollm2-135m).
        #[arg(long, value_name = "NAME|FILE")]
        model: Option<PathBuf>,
        /// Also store the reasoning text and each checkpoint's offset into it (for `export-sft`).
        #[arg(long)]
        keep_text: bool,
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Extract and score one prediction against gold answers.
    #[command(after_help = "Example:\n  stopwise score --task numeric --gold 1000 'The answer is $1,000.'")]
    Score {
        #[arg(long)]
        task: Task,
        #[arg(long, required = true)]
        gold: Vec<String>,
        prediction: String,
        /// Accepted for uniformity; the output is always JSON.
        #[arg(long)]
        json: bool,
    },
    /// Replay a stop rule (JSON, `key = value` list or preset name) on a trace file.
    #[command(
        after_help = "Examples:\n  stopwise replay --traces data/traces/gsm8k.jsonl.gz --rule dynasor-cot\n  stopwise replay --traces t.jsonl --rule '{\"type\":\"budget\",\"max_tokens\":256}'"
    )]
    Replay {
        #[arg(long)]
        traces: PathBuf,
        #[arg(long)]
        rule: String,
        #[arg(long)]
        json: bool,
    },
    /// Certify the most aggressive stop setting whose risk stays under epsilon (with probability
    /// at least 1 - delta), and write it as a certificate that `replay` and `serve` take as a policy.
    #[command(
        after_help = "Example:\n  stopwise calibrate --traces data/traces/gsm8k.jsonl --epsilon 0.02 --delta 0.05 --out cert.json"
    )]
    Calibrate {
        #[command(flatten)]
        certify: CertifyOptions,
        #[arg(long, default_value_t = 0.01)]
        epsilon: f64,
        /// Write the certificate here.
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Check the guarantee: certify on random calibration halves, measure on the test halves.
    #[command(
        after_help = "Example:\n  stopwise validate --traces data/traces/gsm8k.jsonl --epsilon 0.01 --epsilon 0.02 --epsilon 0.05 --splits 1000 --seed 1"
    )]
    Validate {
        #[command(flatten)]
        certify: CertifyOptions,
        /// Risk budget; repeat to validate several (default 0.01).
        #[arg(long = "epsilon")]
        epsilons: Vec<f64>,
        #[arg(long, default_value_t = 1000)]
        splits: u64,
        #[arg(long, default_value_t = 0.5)]
        calibration_fraction: f64,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long)]
        json: bool,
    },
    /// HTML report: every family's Pareto frontier on one plot, the presets as labelled points,
    /// the oracle bound and (with --certificate) the certified setting.
    #[command(
        after_help = "Example:\n  stopwise report --traces data/traces/gsm8k.jsonl --certificate cert.json --out report"
    )]
    Report {
        #[arg(long = "traces", required = true)]
        traces: Vec<PathBuf>,
        #[arg(long)]
        certificate: Option<PathBuf>,
        #[arg(long, default_value_t = 32)]
        thresholds: usize,
        #[arg(long, default_value = "stopwise-report")]
        out: PathBuf,
    },
    /// OpenAI-compatible streaming proxy that stops generation early (in front of an
    /// OpenAI-compatible server, or the embedded model when no upstream is given).
    #[command(
        after_help = "Examples:\n  stopwise serve --listen 127.0.0.1:8080\n  stopwise serve --upstream http://127.0.0.1:8000/v1 --model-name qwen\n  stopwise serve --config stopwise.toml\n\nEnvironment: STOPWISE_LISTEN, STOPWISE_UPSTREAM, STOPWISE_POLICY, STOPWISE_BODY_LIMIT, STOPWISE_ADMIN_TOKEN."
    )]
    Serve {
        /// TOML config (see stopwise.example.toml).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Address to listen on (default 127.0.0.1:8080).
        #[arg(long)]
        listen: Option<String>,
        /// OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1 (default: the embedded model).
        #[arg(long)]
        upstream: Option<String>,
        /// Model name clients ask for (default `default`).
        #[arg(long)]
        model_name: Option<String>,
        /// Policy of the route(s): preset, JSON or `key = value` list.
        #[arg(long)]
        policy: Option<String>,
        /// Model name (see `stopwise model list`) or GGUF file of the embedded engine; wins over
        /// the config file's `[engine] model` (default: smollm2-135m).
        #[arg(long, value_name = "NAME|FILE")]
        model: Option<PathBuf>,
    },
    /// Sweep rule families over thresholds; print the table and Pareto frontier.
    #[command(
        after_help = "Example:\n  stopwise sweep --traces t.jsonl --rule consistency --rule confidence --thresholds 32"
    )]
    Sweep {
        #[arg(long)]
        traces: PathBuf,
        /// Families: budget, consistency, confidence, logprob_window, learned:MODEL.json (default:
        /// every hand-rule family).
        #[arg(long = "rule")]
        rules: Vec<String>,
        #[arg(long, default_value_t = 32)]
        thresholds: usize,
        /// Also write an HTML report with an SVG plot into this folder.
        #[arg(long)]
        report: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Train the learned stopper on traces; with --test-fraction, compare it with every hand rule.
    #[command(
        after_help = "Examples:\n  stopwise train --traces data/traces/gsm8k.jsonl --out stopper.json --seed 1 --test-fraction 0.3\n  stopwise train --traces t.jsonl --out stopper.json --search random --trials 30 --folds 5\n\nUse the model as a rule: --rule '{\"type\":\"learned\",\"model\":\"stopper.json\",\"threshold\":0.9}'"
    )]
    Train(learn::TrainArgs),
    /// Write chat-format fine-tuning examples (prompt + reasoning cut where the probe was wrong
    /// but the full answer right -> the full answer) from traces recorded with `run --keep-text`.
    #[command(after_help = "Example:\n  stopwise export-sft --traces traces-with-text.jsonl --out sft.jsonl")]
    ExportSft(learn::ExportSftArgs),
}

/// What `calibrate` and `validate` share.
#[derive(clap::Args)]
struct CertifyOptions {
    /// Trace files (repeatable; ids must be unique across files).
    #[arg(long = "traces", required = true)]
    traces: Vec<PathBuf>,
    #[arg(long, default_value_t = 0.05)]
    delta: f64,
    /// em-drop (a correct full answer became wrong; needs gold) or disagreement (no gold needed).
    #[arg(long, default_value = "em-drop")]
    risk: Risk,
    /// ltt (high-probability guarantee), crc (expected risk) or naive (no guarantee, for comparison).
    #[arg(long, default_value = "ltt")]
    method: Method,
    /// LTT p-value: binomial (exact) or hoeffding-bentkus.
    #[arg(long, default_value = "binomial")]
    p_value: PValue,
    /// Candidate groups: families (budget, consistency, confidence, logprob_window,
    /// learned:MODEL.json) or preset names; repeatable (default: every hand-rule family).
    #[arg(long = "rule")]
    rules: Vec<String>,
    /// Thresholds per family grid.
    #[arg(long, default_value_t = 32)]
    thresholds: usize,
}

impl CertifyOptions {
    fn settings(&self, epsilon: f64) -> Settings {
        Settings { epsilon, delta: self.delta, risk: self.risk, method: self.method, p_value: self.p_value }
    }
}

#[derive(Subcommand)]
enum BenchAction {
    /// Proxy cost and savings: time to first token and total time via `stopwise serve` (stopping
    /// off and on) against calling the same upstream directly, as ratios; upstream tokens decoded
    /// per token delivered.
    #[command(
        after_help = "Example (llama-cpp-python on :8000 and a probe instance on :8001, stopwise serve on :8080):\n  stopwise bench serve --direct http://127.0.0.1:8000/v1 --proxy http://127.0.0.1:8080/v1 --model smol"
    )]
    Serve {
        #[arg(long)]
        direct: String,
        #[arg(long)]
        proxy: String,
        #[arg(long)]
        model: String,
        #[arg(long, default_value_t = 20)]
        rounds: usize,
        #[arg(long, default_value_t = 256)]
        max_tokens: u32,
        #[arg(
            long,
            default_value = "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips did Natalia sell altogether in April and May? Explain step by step."
        )]
        question: String,
        /// Policy of the stopping-on requests.
        #[arg(long, default_value = "dynasor-cot")]
        policy: String,
    },
    /// Sweep speed vs a plain parse and vs a numpy baseline, on synthetic traces.
    Sweep {
        #[arg(long, default_value_t = 100_000)]
        traces: usize,
        #[arg(long, default_value_t = 64)]
        checkpoints: u32,
        #[arg(long, default_value_t = 256)]
        thresholds: usize,
        #[arg(long, default_value_t = 7)]
        seed: u64,
    },
}

#[derive(Subcommand)]
enum ModelAction {
    /// Download a model of the catalog (by default SmolLM2-135M-Instruct Q4_1) and verify its hash;
    /// does nothing when it is already there and intact.
    #[command(after_help = "Examples:\n  stopwise model fetch\n  stopwise model fetch qwen2.5-coder-1.5b")]
    Fetch {
        /// Model to download (see `stopwise model list`).
        #[arg(default_value = stopwise_engine::DEFAULT_MODEL)]
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// List the models `fetch` can download, their size and whether they are fetched.
    #[command(after_help = "Example:\n  stopwise model list")]
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Library errors already include their cause in their message; print a cause only
            // when it adds something.
            let mut message = e.to_string();
            for cause in e.chain().skip(1) {
                let cause = cause.to_string();
                if !message.contains(&cause) {
                    message = format!("{message}: {cause}");
                }
            }
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Score { task, gold, prediction, json: _ } => {
            let extracted = answer::extract(task, &prediction);
            let em = answer::exact_match(task, &extracted, &gold);
            let gold: Vec<String> = gold.iter().map(|g| answer::normalize(task, g)).collect();
            println!("{}", json!({"em": u8::from(em), "pred": answer::normalize(task, &extracted), "gold": gold}));
            Ok(())
        }
        Command::Calibrate { certify, epsilon, out, json } => calibrate::calibrate(&calibrate::CalibrateArgs {
            settings: certify.settings(epsilon),
            traces: certify.traces,
            rules: certify.rules,
            thresholds: certify.thresholds,
            out,
            json,
        }),
        Command::Validate { certify, epsilons, splits, calibration_fraction, seed, json } => {
            calibrate::validate_command(&calibrate::ValidateArgs {
                settings: certify.settings(epsilons.first().copied().unwrap_or(0.01)),
                epsilons,
                traces: certify.traces,
                rules: certify.rules,
                thresholds: certify.thresholds,
                splits,
                calibration_fraction,
                seed,
                json,
            })
        }
        Command::Report { traces, certificate, thresholds, out } => {
            report_command(&traces, certificate.as_deref(), thresholds, &out)
        }
        Command::Replay { traces, rule, json } => {
            let spec = calibrate::policy_argument(&rule)?;
            let (_, rows) = evaluate(std::slice::from_ref(&traces), &[], 0, &[(spec.label(), spec)])?;
            print_rows(&rows, json)
        }
        Command::Sweep { traces, rules, thresholds, report, json } => {
            let families = rules.iter().map(|r| learn::parse_family(r)).collect::<Result<Vec<_>>>()?;
            let families = if families.is_empty() { Family::DEFAULTS.to_vec() } else { families };
            let presets = calibrate::peers();
            let (sweep, rows) = evaluate(std::slice::from_ref(&traces), &families, thresholds, &presets)?;
            if let Some(dir) = report {
                let path = report::write_html(&dir, "stopwise sweep", &rows, &sweep.oracle)?;
                eprintln!("report: {}", path.display());
            }
            print_rows(&rows, json)
        }
        Command::Model { action: ModelAction::List { json } } => model::list(json),
        Command::Model { action: ModelAction::Fetch { name, json } } => {
            let path = model::fetch(&name)?;
            if json {
                println!("{}", json!({"model": path}));
            } else {
                println!("{}", path.display());
            }
            Ok(())
        }
        Command::Run {
            dataset,
            task,
            format,
            limit,
            probe_interval,
            probe_suffix,
            probe_max_tokens,
            max_tokens,
            parallel,
            threads,
            system_prompt,
            model,
            keep_text,
            out,
            json,
        } => {
            let (format, mut items) = dataset::read(&dataset, format)?;
            items.truncate(limit.unwrap_or(usize::MAX));
            let engine = load_engine(model.as_deref(), task, system_prompt, parallel, threads)?;
            let settings = record::RecordSettings {
                dataset_name: format.name().to_owned(),
                task,
                probe: ProbeSettings { suffix: probe_suffix, max_tokens: probe_max_tokens, interval: probe_interval },
                max_tokens,
                out: out.clone(),
                in_flight: parallel as usize,
                keep_text,
            };
            let recorded = record::record(&engine, &items, &settings)?;
            if json {
                println!("{}", json!({"recorded": recorded, "out": out}));
            } else {
                println!("recorded {recorded} traces into {}", out.display());
            }
            Ok(())
        }
        Command::Bench { action: BenchAction::Sweep { traces, checkpoints, thresholds, seed } } => {
            bench::sweep(traces, checkpoints, thresholds, seed)
        }
        Command::Bench {
            action: BenchAction::Serve { direct, proxy, model, rounds, max_tokens, question, policy },
        } => {
            let args = stopwise_serve::bench::BenchArgs { direct, proxy, model, rounds, max_tokens, question, policy };
            let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            print!("{}", runtime.block_on(stopwise_serve::bench::run(&args)).map_err(anyhow::Error::msg)?);
            Ok(())
        }
        Command::Demo { limit, out_dir, model, json } => demo(limit, &out_dir, model.as_deref(), json),
        Command::Train(args) => learn::train_command(&args),
        Command::ExportSft(args) => learn::export_sft_command(&args),
        Command::Serve { config, listen, upstream, model_name, policy, model } => {
            let file = match &config {
                Some(path) => stopwise_serve::Config::load(path)?,
                None => stopwise_serve::Config::default(),
            };
            let overrides = stopwise_serve::Overrides { listen, upstream, model_name, policy, model };
            let settings = file.resolve(&overrides, |var| std::env::var(var).ok())?;
            serve(&settings)
        }
    }
}

fn serve(settings: &stopwise_serve::Settings) -> Result<()> {
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    // llama.cpp reports every model load at length; its warnings are what an operator needs.
    // RUST_LOG (`info,llama-cpp-2=debug`, ...) overrides.
    let filter: Targets = std::env::var("RUST_LOG").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        Targets::new()
            .with_default(tracing::Level::INFO)
            .with_target("llama-cpp-2", tracing::Level::WARN)
            .with_target("llama_cpp_2", tracing::Level::WARN)
    });
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .with(filter)
        .init();
    // The model is loaded before the runtime starts, so no async worker ever waits on it.
    let engine = stopwise_serve::load_engine(settings).map_err(anyhow::Error::msg)?;
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("cannot listen on {}", settings.listen))?;
        let address = listener.local_addr()?;
        for route in &settings.routes {
            eprintln!("model `{}` -> {}, policy {}", route.model, route.upstream, route.policy.label());
        }
        // Tests and scripts wait for this line (the port may have been chosen by the OS); it comes
        // once the self-test has passed and signals are handled.
        let ready = move || println!("listening on http://{address}");
        stopwise_serve::serve_then(settings, engine, listener, ready).await.map_err(anyhow::Error::msg)
    })
}

fn load_engine(
    model: Option<&Path>,
    task: Task,
    system_prompt: Option<String>,
    parallel: u32,
    threads: Option<u32>,
) -> Result<LlamaEngine> {
    let path = resolve_model(model)?;
    let mut config = LlamaConfig::new(path);
    config.parallel = parallel.max(1);
    if let Some(threads) = threads {
        config.threads = threads;
    }
    config.system_prompt = Some(system_prompt.unwrap_or_else(|| record::default_system_prompt(task).to_owned()));
    Ok(LlamaEngine::load(config)?)
}

/// Replays `named` rules and sweeps `families` over trace files in one streaming pass.
fn evaluate(
    paths: &[PathBuf],
    families: &[Family],
    thresholds: usize,
    named: &[(String, PolicySpec)],
) -> Result<(SweepReport, Vec<Row>)> {
    let mut sweep: Option<Sweep> = None;
    let mut tallies = vec![Tally::default(); named.len()];
    let mut count = 0usize;
    for path in paths {
        for trace in TraceReader::open(path)? {
            let trace = trace?;
            let facts = TraceFacts::of(&trace);
            let sweep = sweep.get_or_insert_with(|| {
                Sweep::new(families.iter().map(|f| (f.clone(), f.grid(thresholds, trace.probe.interval))))
            });
            sweep.add(&trace, &facts);
            for ((_, spec), tally) in named.iter().zip(&mut tallies) {
                tally.add(&facts, &replay(spec, &trace, &facts));
            }
            count += 1;
        }
    }
    let Some(sweep) = sweep.filter(|_| count > 0) else {
        anyhow::bail!("{}: no traces", paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))
    };
    let report = sweep.finish();
    let row = |label: &str, group: &str, summary| Row {
        label: label.to_owned(),
        group: group.to_owned(),
        summary,
        on_frontier: false,
    };
    let mut rows: Vec<Row> = named
        .iter()
        .zip(&tallies)
        .map(|((label, _), t)| row(label, report::PRESET, t.summary()))
        .chain(report.points.iter().map(|p| row(&p.label, p.family.name(), p.summary)))
        .collect();
    let summaries: Vec<_> = rows.iter().map(|r| r.summary).collect();
    for i in pareto_frontier(&summaries) {
        rows[i].on_frontier = true;
    }
    rows.push(row("oracle (bound)", report::ORACLE, report.oracle));
    Ok((report, rows))
}

/// `stopwise report`: the sweep of every family, the presets, the oracle and the certified point.
fn report_command(traces: &[PathBuf], certificate: Option<&Path>, thresholds: usize, out: &Path) -> Result<()> {
    let mut named: Vec<(String, PolicySpec)> = calibrate::peers();
    if let Some(path) = certificate {
        let policy = calibrate::policy_argument(&path.display().to_string())?;
        named.push((policy.label(), policy));
    }
    let (sweep, mut rows) = evaluate(traces, &Family::DEFAULTS, thresholds, &named)?;
    if certificate.is_some() {
        rows[named.len() - 1].group = report::CERTIFIED.into();
    }
    let title =
        format!("stopwise report: {}", traces.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "));
    let html = report::write_html(out, &title, &rows, &sweep.oracle)?;
    print!("{}", report::table(&rows));
    eprintln!("report: {}", html.display());
    Ok(())
}

fn print_rows(rows: &[Row], json: bool) -> Result<()> {
    if json {
        let out: Vec<_> =
            rows.iter().map(|r| json!({"rule": r.label, "pareto": r.on_frontier, "summary": r.summary})).collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print!("{}", report::table(rows));
    }
    Ok(())
}

fn demo(limit: usize, out_dir: &Path, model: Option<&Path>, json: bool) -> Result<()> {
    let started = std::time::Instant::now();
    let model = model::resolve_or_fetch_default(model)?;
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/samples/gsm8k_sample.jsonl");
    let (format, mut items) = dataset::read(&sample, Some(dataset::Format::Gsm8k))?;
    items.truncate(limit);
    std::fs::create_dir_all(out_dir).with_context(|| format!("{}: cannot create", out_dir.display()))?;
    let traces = out_dir.join("traces.jsonl");
    let engine = load_engine(Some(&model), Task::Numeric, None, 4, None)?;
    let settings = record::RecordSettings {
        dataset_name: format.name().to_owned(),
        task: Task::Numeric,
        probe: ProbeSettings { suffix: record::DEFAULT_PROBE_SUFFIX.into(), max_tokens: 12, interval: 32 },
        max_tokens: 384,
        out: traces.clone(),
        in_flight: 4,
        keep_text: false,
    };
    eprintln!("recording {} GSM8K items with {} into {}", items.len(), model.display(), traces.display());
    record::record(&engine, &items, &settings)?;
    let presets = calibrate::peers();
    let (sweep, rows) = evaluate(std::slice::from_ref(&traces), &Family::DEFAULTS, 16, &presets)?;
    let title = format!("stopwise demo (GSM8K sample, {})", engine.model_name());
    let html = report::write_html(out_dir, &title, &rows, &sweep.oracle)?;
    print_rows(&rows, json)?;
    eprintln!("report: {}\nwall time: {:.0} s", html.display(), started.elapsed().as_secs_f64());
    Ok(())
}
