//! The command line's arguments: every command, flag, default and example, in one place. Parsing
//! only; `main.rs` dispatches and the other modules do the work.

use std::path::PathBuf;

use crate::sources::StoreFilter;

use clap::{Parser, Subcommand};
use stopwise_core::answer::Task;
use stopwise_core::certify::{Method, PValue, Risk, Settings};
use stopwise_core::replay::Limits;
use stopwise_core::rules::Family;

use crate::{dataset, learn, record};

/// `--version`: the crate version and the git commit it was built from (see build.rs).
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("STOPWISE_GIT_COMMIT"), ")");

#[derive(Parser)]
#[command(
    name = "stopwise",
    version = VERSION,
    about = "Early stopping for reasoning LLMs, with the EM cost measured.",
    after_help = "Start with `stopwise demo`; `stopwise help COMMAND` shows a command's flags and an example."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Fetch the model, record traces on a bundled GSM8K sample, replay every rule and write a report.
    #[command(after_help = "Example:\n  stopwise demo --limit 10")]
    Demo {
        /// Items of the bundled sample to record (it has 30).
        #[arg(long, default_value_t = 30)]
        limit: usize,
        /// Folder for the traces and report.html (created if missing).
        #[arg(long, default_value = "stopwise-demo")]
        out_dir: PathBuf,
        /// Model name (see `stopwise model list`) or GGUF file (default: smollm2-135m, fetched if
        /// missing).
        #[arg(long, value_name = "NAME|FILE")]
        model: Option<PathBuf>,
        /// Print the table as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Benchmarks (engine benchmarks: `cargo bench -p stopwise-engine`).
    #[command(after_help = "Example:\n  stopwise bench sweep --traces 10000")]
    Bench {
        #[command(subcommand)]
        action: BenchAction,
    },
    /// Manage the embedded model.
    #[command(after_help = "Example:\n  stopwise model fetch")]
    Model {
        #[command(subcommand)]
        action: ModelAction,
    },
    /// Record full runs with probes on a dataset, as trace v1 JSONL (resumable).
    #[command(
        after_help = "Example:\n  stopwise run --dataset data/eval/gsm8k_test_500.jsonl --task numeric --limit 20 --out traces.jsonl"
    )]
    Run {
        /// Dataset file, JSONL: GSM8K, NQ-open, MATH-500 or `{id, question, gold: [...]}`.
        #[arg(long)]
        dataset: PathBuf,
        /// How answers are extracted and compared: numeric (GSM8K), math (MATH-500) or text (NQ-open).
        #[arg(long)]
        task: Task,
        /// The dataset's layout (default: guessed from the first line's fields).
        #[arg(long, value_enum)]
        format: Option<dataset::Format>,
        /// Record only the first N items.
        #[arg(long)]
        limit: Option<usize>,
        /// Probe the answer every this many generated tokens.
        #[arg(long, default_value_t = 32)]
        probe_interval: u32,
        /// Text appended to the reasoning so far to ask for the answer.
        #[arg(long, default_value = record::DEFAULT_PROBE_SUFFIX)]
        probe_suffix: String,
        /// Most tokens a probe's answer may take.
        #[arg(long, default_value_t = 12)]
        probe_max_tokens: u32,
        /// Most tokens a full run may generate.
        #[arg(long, default_value_t = 512)]
        max_tokens: u32,
        /// Sequences decoded together.
        #[arg(long, default_value_t = 4)]
        parallel: u32,
        /// CPU threads for llama.cpp (default: every core). One thread per process degrades more
        /// gracefully when other work shares the cores.
        #[arg(long)]
        threads: Option<u32>,
        /// System message (default: one per task that asks for a `Final answer:` line).
        #[arg(long)]
        system_prompt: Option<String>,
        /// Model name (see `stopwise model list`) or GGUF file (default: smollm2-135m).
        #[arg(long, value_name = "NAME|FILE")]
        model: Option<PathBuf>,
        /// Also store the reasoning text and each checkpoint's offset into it (for `export-sft`).
        #[arg(long)]
        keep_text: bool,
        /// Trace file to write; ids already in it are skipped, so a run resumes.
        #[arg(long)]
        out: PathBuf,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Extract and score one prediction against gold answers.
    #[command(after_help = "Example:\n  stopwise score --task numeric --gold 1000 'The answer is $1,000.'")]
    Score {
        /// How the answer is extracted and compared: numeric, math or text.
        #[arg(long)]
        task: Task,
        /// A gold answer; repeat for aliases (any one matching counts).
        #[arg(long, required = true)]
        gold: Vec<String>,
        /// The model's output.
        prediction: String,
        /// Accepted for uniformity; the output is always JSON.
        #[arg(long)]
        json: bool,
    },
    /// Replay a stop rule (JSON, `key = value` list, preset name or `never`) on a trace file.
    #[command(
        after_help = "Examples:\n  stopwise replay --traces data/traces/gsm8k.jsonl --rule dynasor-cot\n  stopwise replay --traces t.jsonl --rule '{\"type\":\"budget\",\"max_tokens\":256}'"
    )]
    Replay {
        /// Trace file (JSONL, optionally .gz/.zst), or a trace store (sqlite://PATH, postgres://…).
        #[arg(long)]
        traces: PathBuf,
        #[command(flatten)]
        filter: StoreFilter,
        /// The rule: a preset name, `never`, JSON, a `key = value` list, or a certificate file.
        #[arg(long)]
        rule: String,
        /// Print the result as JSON.
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
        /// Risk budget: the most risk (e.g. 0.01 = 1 point of EM) the setting may have.
        #[arg(long, default_value_t = 0.01)]
        epsilon: f64,
        /// Write the certificate here.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Print the result as JSON.
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
        /// Random calibration/test splits to draw.
        #[arg(long, default_value_t = 1000)]
        splits: u64,
        /// Share of the traces each split certifies on (the rest measures).
        #[arg(long, default_value_t = 0.5)]
        calibration_fraction: f64,
        /// Seed of the splits (same seed, same splits).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// HTML report: every family's Pareto frontier on one plot, the presets as labelled points,
    /// the oracle bound and (with --certificate) the certified setting.
    #[command(
        after_help = "Example:\n  stopwise report --traces data/traces/gsm8k.jsonl --certificate cert.json --out report"
    )]
    Report {
        /// Trace files or stores (repeatable).
        #[arg(long = "traces", required = true)]
        traces: Vec<PathBuf>,
        #[command(flatten)]
        filter: StoreFilter,
        /// A certificate from `stopwise calibrate`, drawn as the certified point.
        #[arg(long)]
        certificate: Option<PathBuf>,
        /// Thresholds per family grid.
        #[arg(long, default_value_t = 32)]
        thresholds: usize,
        /// Folder to write report.html into.
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
        /// Policy of the route(s): preset, `never`, JSON, `key = value` list or certificate file.
        #[arg(long)]
        policy: Option<String>,
        /// Model name (see `stopwise model list`) or GGUF file of the embedded engine; wins over
        /// the config file's `[engine] model` (default: smollm2-135m).
        #[arg(long, value_name = "NAME|FILE")]
        model: Option<PathBuf>,
    },
    /// Sweep rule families over thresholds; print the table and Pareto frontier.
    #[command(
        after_help = "Example:\n  stopwise sweep --traces data/traces/gsm8k.jsonl --rule consistency --rule confidence --thresholds 32"
    )]
    Sweep {
        /// Trace file (JSONL, optionally .gz/.zst), or a trace store (sqlite://PATH, postgres://…).
        #[arg(long)]
        traces: PathBuf,
        #[command(flatten)]
        filter: StoreFilter,
        #[arg(long = "rule", help = format!("Families: {} (default: every hand-rule family)", Family::usage()))]
        rules: Vec<String>,
        /// Thresholds per family grid.
        #[arg(long, default_value_t = 32)]
        thresholds: usize,
        /// Also write an HTML report with an SVG plot into this folder.
        #[arg(long)]
        report: Option<PathBuf>,
        /// Print the table as JSON.
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
    /// Write a trace store's traces, feedback joined as gold, to a file.
    #[command(
        after_help = "Examples:\n  stopwise export --store sqlite://$HOME/.cache/stopwise/stopwise.db --out served.jsonl\n  stopwise export --store postgres://sw@db/sw --route qwen --last 500 --complete-only --out window.jsonl"
    )]
    Export {
        /// The store: sqlite://PATH or postgres://USER:PASSWORD@HOST/DB.
        #[arg(long)]
        store: String,
        #[command(flatten)]
        filter: StoreFilter,
        /// Only traces that can replay any rule (audits, full runs probed at every checkpoint).
        #[arg(long)]
        complete_only: bool,
        /// Output format.
        #[arg(long, value_enum, default_value = "jsonl")]
        format: ExportFormat,
        /// File to write (replaced atomically).
        #[arg(long)]
        out: PathBuf,
    },
    /// Print a shell completion script.
    #[command(
        after_help = "Examples:\n  stopwise completions bash > ~/.local/share/bash-completion/completions/stopwise\n  stopwise completions zsh > ~/.zfunc/_stopwise"
    )]
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
    /// Write man pages (stopwise.1 and one per command) into a folder.
    #[command(after_help = "Example:\n  stopwise man --out man && man -l man/stopwise.1")]
    Man {
        /// Folder to write the pages into (created if missing).
        #[arg(long, default_value = "man")]
        out: PathBuf,
    },
}

/// What `calibrate` and `validate` share.
#[derive(clap::Args)]
pub struct CertifyOptions {
    /// Trace files or stores (sqlite://PATH, postgres://…; repeatable; ids unique across files).
    #[arg(long = "traces", required = true)]
    pub traces: Vec<PathBuf>,
    #[command(flatten)]
    pub filter: StoreFilter,
    /// Allowed failure probability: the guarantee holds with probability at least 1 - delta.
    #[arg(long, default_value_t = 0.05)]
    pub delta: f64,
    /// em-drop (a correct full answer became wrong; needs gold) or disagreement (no gold needed).
    #[arg(long, default_value = "em-drop")]
    pub risk: Risk,
    /// ltt (high-probability guarantee), crc (expected risk) or naive (no guarantee, for comparison).
    #[arg(long, default_value = "ltt")]
    pub method: Method,
    /// LTT p-value: binomial (exact) or hoeffding-bentkus.
    #[arg(long, default_value = "binomial")]
    pub p_value: PValue,
    #[arg(
        long = "rule",
        help = format!(
            "Candidate groups: families ({}) or preset names; repeatable (default: every hand-rule family)",
            Family::usage()
        )
    )]
    pub rules: Vec<String>,
    /// Thresholds per family grid.
    #[arg(long, default_value_t = 32)]
    pub thresholds: usize,
    /// Probes per request at most, as `probe.max_probes` of the route that will serve the result.
    #[arg(long, default_value_t = Limits::DEFAULT_MAX_PROBES)]
    pub max_probes: u32,
}

impl CertifyOptions {
    pub fn settings(&self, epsilon: f64) -> Settings {
        Settings { epsilon, delta: self.delta, risk: self.risk, method: self.method, p_value: self.p_value }
    }

    pub fn limits(&self) -> Limits {
        Limits { max_probes: self.max_probes }
    }
}

/// What `export` writes.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum ExportFormat {
    /// Trace format v1, one trace per line (what every command reads).
    Jsonl,
}

#[derive(Subcommand)]
pub enum BenchAction {
    /// Proxy cost and savings: time to first token and total time via `stopwise serve` (stopping
    /// off and on) against calling the same upstream directly, as ratios; upstream tokens decoded
    /// per token delivered.
    #[command(
        after_help = "Example (llama-cpp-python on :8000 and a probe instance on :8001, stopwise serve on :8080):\n  stopwise bench serve --direct http://127.0.0.1:8000/v1 --proxy http://127.0.0.1:8080/v1 --model smol"
    )]
    Serve {
        /// Base URL of the upstream, called directly (the baseline).
        #[arg(long)]
        direct: String,
        /// Base URL of `stopwise serve` in front of the same upstream.
        #[arg(long)]
        proxy: String,
        /// Model name to ask both for.
        #[arg(long)]
        model: String,
        /// Requests per configuration.
        #[arg(long, default_value_t = 20)]
        rounds: usize,
        /// max_tokens of every request.
        #[arg(long, default_value_t = 256)]
        max_tokens: u32,
        /// The user message of every request.
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
    #[command(after_help = "Example:\n  stopwise bench sweep --traces 100000 --thresholds 256")]
    Sweep {
        /// Synthetic traces to generate.
        #[arg(long, default_value_t = 100_000)]
        traces: usize,
        /// Checkpoints per synthetic trace.
        #[arg(long, default_value_t = 64)]
        checkpoints: u32,
        /// Thresholds per family grid.
        #[arg(long, default_value_t = 256)]
        thresholds: usize,
        /// Seed of the synthetic traces.
        #[arg(long, default_value_t = 7)]
        seed: u64,
    },
    /// The trace store's write throughput (traces/s through serve's writer: queue, batches,
    /// transactions) against serialising the same traces alone, in the same run.
    #[command(
        after_help = "Examples:\n  stopwise bench store --traces data/traces/gsm8k.jsonl --copies 20\n  stopwise bench store --traces t.jsonl --store postgres://sw@127.0.0.1/bench"
    )]
    Store {
        /// Traces to write (each written `--copies` times under fresh response ids).
        #[arg(long)]
        traces: PathBuf,
        /// Times each trace is written (under fresh response ids).
        #[arg(long, default_value_t = 10)]
        copies: usize,
        /// Store to write to (default: a SQLite file in a fresh temporary folder).
        #[arg(long)]
        store: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum ModelAction {
    /// Download a model of the catalog (by default SmolLM2-135M-Instruct Q4_1) and verify its hash;
    /// does nothing when it is already there and intact.
    #[command(after_help = "Examples:\n  stopwise model fetch\n  stopwise model fetch qwen2.5-coder-1.5b")]
    Fetch {
        /// Model to download (see `stopwise model list`).
        #[arg(default_value = stopwise_engine::DEFAULT_MODEL)]
        name: String,
        /// Print the model's path as JSON.
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

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    /// Every command (at every depth) and the commands it reaches.
    fn all_commands(command: &clap::Command) -> Vec<&clap::Command> {
        let mut all = vec![command];
        for sub in command.get_subcommands() {
            all.extend(all_commands(sub));
        }
        all
    }

    #[test]
    fn every_flag_has_help_and_every_command_an_example() {
        let cli = Cli::command();
        let mut missing = Vec::new();
        for command in all_commands(&cli) {
            let name = command.get_name();
            if name == "help" {
                continue;
            }
            let leaf = !command.has_subcommands();
            let example = command.get_after_help().map(|h| h.to_string()).unwrap_or_default();
            if leaf && !example.contains("stopwise ") {
                missing.push(format!("`{name}` has no example"));
            }
            for arg in command.get_arguments() {
                let id = arg.get_id().as_str();
                if id != "help" && id != "version" && arg.get_help().is_none() {
                    missing.push(format!("`{name} --{id}` has no help"));
                }
            }
        }
        assert!(missing.is_empty(), "{}", missing.join("\n"));
    }

    #[test]
    fn the_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
