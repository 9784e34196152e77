//! `stopwise`: the command line. Thin: parsing arguments and printing; the work is in the crates.

mod args;
mod bench;
mod calibrate;
mod dataset;
mod docs;
mod learn;
mod model;
mod record;
mod report;
mod sources;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use serde_json::json;
use stopwise_core::answer::{self, Task};
use stopwise_core::replay::Limits;
use stopwise_core::replay::{replay, Tally, TraceFacts};
use stopwise_core::rules::{Family, PolicySpec};
use stopwise_core::sweep::{pareto_frontier, Sweep, SweepReport};
use stopwise_core::trace::ProbeSettings;
use stopwise_engine::{resolve_model, Engine, LlamaConfig, LlamaEngine};

use crate::args::{BenchAction, Cli, Command, ModelAction};
use crate::report::Row;

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
            limits: certify.limits(),
            traces: certify.traces,
            filter: certify.filter,
            rules: certify.rules,
            thresholds: certify.thresholds,
            out,
            json,
        }),
        Command::Validate { certify, epsilons, splits, calibration_fraction, seed, json } => {
            calibrate::validate_command(&calibrate::ValidateArgs {
                settings: certify.settings(epsilons.first().copied().unwrap_or(0.01)),
                limits: certify.limits(),
                epsilons,
                traces: certify.traces,
                filter: certify.filter,
                rules: certify.rules,
                thresholds: certify.thresholds,
                splits,
                calibration_fraction,
                seed,
                json,
            })
        }
        Command::Report { traces, filter, certificate, thresholds, out } => {
            report_command(&traces, &filter, certificate.as_deref(), thresholds, &out)
        }
        Command::Replay { traces, filter, rule, json } => {
            let spec = calibrate::policy_argument(&rule)?;
            let (_, rows) = evaluate(std::slice::from_ref(&traces), &filter, &[], 0, &[(spec.label(), spec)])?;
            print_rows(&rows, json)
        }
        Command::Export { store, filter, complete_only, format: args::ExportFormat::Jsonl, out } => {
            let written = export(&store, &filter, complete_only, &out)?;
            eprintln!("exported {written} traces into {}", out.display());
            Ok(())
        }
        Command::Sweep { traces, filter, rules, thresholds, report, json } => {
            let families = rules.iter().map(|r| calibrate::parse_family(r)).collect::<Result<Vec<_>>>()?;
            let families = if families.is_empty() { Family::defaults() } else { families };
            let presets = calibrate::peers();
            let (sweep, rows) = evaluate(std::slice::from_ref(&traces), &filter, &families, thresholds, &presets)?;
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
        Command::Bench { action: BenchAction::Store { traces, copies, store } } => {
            print!("{}", bench::store(&traces, copies, store)?);
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
        Command::Completions { shell } => {
            docs::completions(shell);
            Ok(())
        }
        Command::Man { out } => {
            println!("{}", docs::man_pages(&out)?.display());
            Ok(())
        }
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
    filter: &sources::StoreFilter,
    families: &[Family],
    thresholds: usize,
    named: &[(String, PolicySpec)],
) -> Result<(SweepReport, Vec<Row>)> {
    let mut sweep: Option<Sweep> = None;
    let mut tallies = vec![Tally::default(); named.len()];
    let mut count = 0usize;
    for trace in sources::open(paths, filter) {
        let trace = trace?;
        let facts = TraceFacts::of(&trace);
        let sweep = sweep.get_or_insert_with(|| {
            Sweep::new(
                families.iter().map(|f| (f.clone(), f.grid(thresholds, trace.probe.interval))),
                Limits::default(),
            )
        });
        sweep.add(&trace, &facts);
        for ((_, spec), tally) in named.iter().zip(&mut tallies) {
            tally.add(&facts, &replay(spec, &trace, &facts, Limits::default()));
        }
        count += 1;
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

/// `stopwise export`: the store's traces as one JSONL file, replaced atomically; returns how many.
fn export(store: &str, filter: &sources::StoreFilter, complete_only: bool, out: &Path) -> Result<usize> {
    let selection =
        stopwise_db::Selection { route: filter.route.clone(), last: filter.last, complete_only, ..Default::default() };
    let mut written = 0;
    let mut failed = None;
    stopwise_store::replace_file(out, |file| {
        for trace in sources::read_store(store.to_owned(), selection) {
            match trace {
                Ok(trace) => {
                    writeln!(file, "{}", trace.to_line())?;
                    written += 1;
                }
                Err(e) => {
                    failed = Some(e);
                    return Err(std::io::Error::other("the store could not be read"));
                }
            }
        }
        Ok(())
    })
    .map_err(|e| failed.take().unwrap_or_else(|| e.into()))?;
    Ok(written)
}

/// `stopwise report`: the sweep of every family, the presets, the oracle and the certified point.
fn report_command(
    traces: &[PathBuf],
    filter: &sources::StoreFilter,
    certificate: Option<&Path>,
    thresholds: usize,
    out: &Path,
) -> Result<()> {
    let mut named: Vec<(String, PolicySpec)> = calibrate::peers();
    if let Some(path) = certificate {
        let policy = calibrate::policy_argument(&path.display().to_string())?;
        named.push((policy.label(), policy));
    }
    let (sweep, mut rows) = evaluate(traces, filter, &Family::defaults(), thresholds, &named)?;
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
    // Built into the binary, so the demo runs wherever the binary is, not only in a checkout.
    let sample = include_str!("../../../data/samples/gsm8k_sample.jsonl");
    let (format, mut items) = dataset::parse(sample.as_bytes(), "bundled GSM8K sample", Some(dataset::Format::Gsm8k))?;
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
    let (sweep, rows) =
        evaluate(std::slice::from_ref(&traces), &Default::default(), &Family::defaults(), 16, &presets)?;
    let title = format!("stopwise demo (GSM8K sample, {})", engine.model_name());
    let html = report::write_html(out_dir, &title, &rows, &sweep.oracle)?;
    print_rows(&rows, json)?;
    eprintln!("report: {}\nwall time: {:.0} s", html.display(), started.elapsed().as_secs_f64());
    Ok(())
}
