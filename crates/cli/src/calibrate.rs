//! `stopwise calibrate` and `stopwise validate`: certified stop settings from recorded traces,
//! and the check, over random calibration/test splits, that the certificate's guarantee holds.
//!
//! The statistics are in `stopwise_core::certify`; this module loads traces, builds the outcome
//! table, prints and writes files.

use std::fmt::Write as _;
use std::path::PathBuf;

use crate::sources::StoreFilter;
use anyhow::{bail, Context, Result};
use stopwise_core::certify::{
    certify, validate, Candidates, Certificate, Certification, OutcomeTable, Risk, Settings, Validation,
};
use stopwise_core::policy::{self, presets, Files};
use stopwise_core::replay::Limits;
use stopwise_core::rules::{Family, PolicySpec};
use stopwise_core::trace::Trace;

/// The traces of several files or stores, in order; ids must be unique across files.
pub fn load_traces(paths: &[PathBuf], filter: &StoreFilter) -> Result<Vec<Trace>> {
    if paths.is_empty() {
        bail!("no trace file given: pass --traces FILE (repeatable)");
    }
    crate::sources::open(paths, filter).collect()
}

/// Candidate groups from `--rule` values: a family name (swept over its grid) or a preset name
/// (one setting). None given: every family.
pub fn candidates(rules: &[String]) -> Result<Vec<Candidates>> {
    if rules.is_empty() {
        return Ok(Family::defaults().into_iter().map(Candidates::Family).collect());
    }
    rules
        .iter()
        .map(|rule| {
            let name = rule.split_once(':').map_or(rule.as_str(), |(name, _)| name);
            if Family::NAMES.contains(&name) {
                return Ok(Candidates::Family(parse_family(rule)?));
            }
            match presets().into_iter().find(|(name, _, _)| name == rule) {
                Some((name, policy, _)) => Ok(Candidates::Policy { name: name.to_owned(), policy }),
                None => bail!(
                    "--rule `{rule}` is neither a family ({}) nor a preset ({})",
                    Family::usage(),
                    presets().iter().map(|p| p.0).collect::<Vec<_>>().join(", ")
                ),
            }
        })
        .collect()
}

/// The published presets, reported beside the certified setting.
pub fn peers() -> Vec<(String, PolicySpec)> {
    presets().into_iter().map(|(name, spec, _)| (name.to_owned(), spec)).collect()
}

pub struct CalibrateArgs {
    pub traces: Vec<PathBuf>,
    pub filter: StoreFilter,
    pub settings: Settings,
    pub rules: Vec<String>,
    pub thresholds: usize,
    pub limits: Limits,
    pub out: Option<PathBuf>,
    pub json: bool,
}

pub fn calibrate(args: &CalibrateArgs) -> Result<()> {
    let traces = load_traces(&args.traces, &args.filter)?;
    let candidates = candidates(&args.rules)?;
    let table = OutcomeTable::build(&traces, &candidates, &[], args.thresholds, args.limits);
    let items: Vec<usize> = (0..table.items()).collect();
    let result = certify(&table, &items, &args.settings)?;
    let Some(mut certificate) = Certificate::of(&result) else {
        if args.json {
            println!("{}", serde_json::json!({"certificate": null, "candidates": result.candidates}));
        } else {
            print!("{}", candidate_table(&result));
        }
        bail!("{}", nothing_certified(&result, table.groups.len()));
    };
    certificate.traces = Some(args.traces.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(","));
    let text = serde_json::to_string_pretty(&certificate)?;
    if let Some(out) = &args.out {
        stopwise_store::write_file(out, format!("{text}\n").as_bytes())?;
    }
    if args.json {
        println!("{text}");
    } else {
        print!("{}", candidate_table(&result));
        println!(
            "\ncertified: {}  (token reduction {:.1}% with probes counted; {} risk {:.4} on n={}, upper bound {:.4} <= epsilon {} at delta {}, {})",
            certificate.label,
            100.0 * certificate.token_reduction,
            certificate.risk,
            certificate.empirical_risk,
            certificate.n,
            certificate.upper_bound,
            certificate.epsilon,
            certificate.delta,
            certificate.method,
        );
        if let Some(out) = &args.out {
            println!("certificate: {} (use it as a policy: --rule {})", out.display(), out.display());
        }
    }
    Ok(())
}

fn nothing_certified(result: &Certification, groups: usize) -> String {
    let s = result.settings;
    let needed = result.items_needed(groups);
    let at = format!(
        "at epsilon {} and delta {} ({} over {} groups) on {} risk items",
        s.epsilon, s.delta, s.method, groups, result.n
    );
    if let Some(safe) = result.candidates.iter().find(|c| c.certified) {
        return format!(
            "no setting certified {at} saves tokens: {} and the others certified cost at least as many probe \
             tokens as their stops save; keep full runs, or probe less often (a larger --probe-interval when recording)",
            safe.label
        );
    }
    if result.n < needed {
        return format!(
            "nothing could be certified {at}: even a setting with no observed loss needs at least {needed} risk \
             items{}; record more traces, raise --epsilon or --delta, or name fewer groups with --rule",
            if s.risk == Risk::EmDrop { " (traces with gold)" } else { "" }
        );
    }
    format!(
        "nothing could be certified {at}: the safest setting of every group already loses too often; raise \
         --epsilon or try other rules"
    )
}

fn candidate_table(result: &Certification) -> String {
    let mut out = format!(
        "{:<36} {:>6} {:>6} {:>8} {:>10} {:>8} {:>9}  certified\n",
        "candidate (safest first per group)", "n", "losses", "risk", "p-value", "bound", "tok saved"
    );
    for c in &result.candidates {
        let _ = writeln!(
            out,
            "{:<36} {:>6} {:>6} {:>8.4} {:>10} {:>8.4} {:>8.1}%  {}",
            c.label,
            c.n,
            c.losses,
            c.empirical_risk,
            c.p_value.map_or("-".into(), |p| format!("{p:.2e}")),
            c.bound,
            100.0 * c.token_reduction,
            if c.certified { "yes" } else { "no" }
        );
    }
    out
}

pub struct ValidateArgs {
    pub traces: Vec<PathBuf>,
    pub filter: StoreFilter,
    pub settings: Settings,
    pub epsilons: Vec<f64>,
    pub rules: Vec<String>,
    pub thresholds: usize,
    pub limits: Limits,
    pub splits: u64,
    pub calibration_fraction: f64,
    pub seed: u64,
    pub json: bool,
}

pub fn validate_command(args: &ValidateArgs) -> Result<()> {
    let traces = load_traces(&args.traces, &args.filter)?;
    let table = OutcomeTable::build(&traces, &candidates(&args.rules)?, &peers(), args.thresholds, args.limits);
    let epsilons = if args.epsilons.is_empty() { vec![args.settings.epsilon] } else { args.epsilons.clone() };
    let results = epsilons
        .iter()
        .map(|&epsilon| {
            validate(&table, &Settings { epsilon, ..args.settings }, args.splits, args.calibration_fraction, args.seed)
        })
        .collect::<Result<Vec<_>, _>>()?;
    if args.json {
        let text = match results.as_slice() {
            [one] => serde_json::to_string_pretty(one)?,
            many => serde_json::to_string_pretty(many)?,
        };
        println!("{text}");
    } else {
        print!("{}", validation_table(&results, &args.traces));
    }
    Ok(())
}

fn validation_table(results: &[Validation], traces: &[PathBuf]) -> String {
    let Some(first) = results.first() else { return String::new() };
    let mut out = format!(
        "{} splits (seed {}), {} calibration / {} test traces from {}; risk {}, delta {}, method {}\n\n",
        first.splits,
        first.seed,
        first.calibration_items,
        first.test_items,
        traces.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "),
        first.settings.risk,
        first.settings.delta,
        first.settings.method,
    );
    let _ = writeln!(
        out,
        "{:<8} {:>9} {:>10} {:>10} {:>9} {:>10} {:>11} {:>10}  most chosen",
        "epsilon", "coverage", "certified", "mean risk", "p95 risk", "tok saved", "best saved", "efficiency"
    );
    for v in results {
        let _ = writeln!(
            out,
            "{:<8} {:>8.1}% {:>9.1}% {:>10.4} {:>9.4} {:>9.1}% {:>10.1}% {:>10.2}  {}",
            v.settings.epsilon,
            100.0 * v.coverage,
            100.0 * v.certified_share,
            v.mean_test_risk,
            v.p95_test_risk,
            100.0 * v.mean_token_reduction,
            100.0 * v.mean_best_token_reduction,
            v.efficiency,
            v.chosen.first().map_or("", |c| c.0.as_str()),
        );
    }
    let _ = writeln!(out, "\npeers at their published thresholds (same test halves):");
    let _ = writeln!(
        out,
        "{:<16} {:>10} {:>10}  coverage at epsilon {}",
        "preset",
        "mean risk",
        "tok saved",
        results.iter().map(|v| v.settings.epsilon.to_string()).collect::<Vec<_>>().join(" / ")
    );
    for (k, peer) in first.peers.iter().enumerate() {
        let coverages: Vec<String> = results.iter().map(|v| format!("{:.1}%", 100.0 * v.peers[k].coverage)).collect();
        let _ = writeln!(
            out,
            "{:<16} {:>10.4} {:>9.1}%  {}",
            peer.label,
            peer.mean_test_risk,
            100.0 * peer.mean_token_reduction,
            coverages.join(" / ")
        );
    }
    out
}

/// Files as a command line names them: relative to the working directory.
fn command_line_files() -> Files<'static> {
    Files::read_with(&stopwise_store::read_if_file, "")
}

/// Reads a `--rule` argument: a file (certificate or policy) when the path exists, otherwise a
/// preset name, `never`, JSON or `key = value` pairs; model files it names are read too.
pub fn policy_argument(rule: &str) -> Result<PolicySpec> {
    policy::load(rule, &command_line_files()).context("--rule: not a policy or certificate")
}

/// A rule family named on the command line: `budget`, or `learned:MODEL.json` (the learned
/// stopper's scores swept over probability thresholds).
pub fn parse_family(name: &str) -> Result<Family> {
    Ok(Family::parse(name, &command_line_files())?)
}
