//! Where traces come from: trace files, or a trace store named by URL (`sqlite://PATH`,
//! `postgres://…`), which gives the served traces that can replay any rule (audits, and full
//! runs probed at every checkpoint) with feedback joined as gold. Every command that reads traces
//! reads them through [`open`], so `--traces` takes either.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use stopwise_core::trace::Trace;
use stopwise_db::{Selection, Store};
use stopwise_store::TraceFiles;

/// Which of a store's traces to read (files ignore it).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct StoreFilter {
    /// With a store as --traces: only this route's traces.
    #[arg(long)]
    pub route: Option<String>,
    /// With a store as --traces: only the most recent N traces (the live estimator's window).
    #[arg(long, value_name = "N")]
    pub last: Option<u64>,
}

impl StoreFilter {
    fn selection(&self, complete_only: bool) -> Selection {
        Selection { route: self.route.clone(), complete_only, last: self.last, ..Selection::default() }
    }
}

/// Whether a `--traces` value names a store rather than a file.
pub fn is_store(source: &Path) -> bool {
    let text = source.to_string_lossy();
    ["sqlite:", "postgres://", "postgresql://"].iter().any(|scheme| text.starts_with(scheme))
}

/// Traces the store keeps in flight between its reader and the command, at most.
const READ_AHEAD: usize = 1024;

/// The traces of every source in order: files as [`TraceFiles`] reads them (ids unique across
/// files), stores streamed (memory stays flat however many they hold).
pub fn open(sources: &[PathBuf], filter: &StoreFilter) -> impl Iterator<Item = Result<Trace>> {
    let filter = filter.clone();
    let sources = sources.to_vec();
    let mut files = Vec::new();
    let mut parts: Vec<Box<dyn Iterator<Item = Result<Trace>>>> = Vec::new();
    for source in sources {
        if is_store(&source) {
            if !files.is_empty() {
                parts.push(Box::new(TraceFiles::open(&std::mem::take(&mut files)).map(|t| t.map_err(Into::into))));
            }
            parts.push(Box::new(read_store(source.to_string_lossy().into_owned(), filter.selection(true))));
        } else {
            files.push(source);
        }
    }
    if !files.is_empty() {
        parts.push(Box::new(TraceFiles::open(&files).map(|t| t.map_err(Into::into))));
    }
    parts.into_iter().flatten()
}

/// Every trace of a store matching `selection`, read on a thread of its own.
pub fn read_store(url: String, selection: Selection) -> impl Iterator<Item = Result<Trace>> {
    let (tx, rx) = std::sync::mpsc::sync_channel(READ_AHEAD);
    std::thread::spawn(move || {
        let shown = stopwise_db::redacted(&url);
        let read = async {
            let store = Store::open(&url).await?;
            store.traces(&selection, |trace| tx.send(Ok(trace)).is_ok()).await
        };
        let result = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the store reader")
            .and_then(|runtime| runtime.block_on(read).with_context(|| format!("reading {shown}")));
        if let Err(e) = result {
            let _ = tx.send(Err(e));
        }
    });
    rx.into_iter()
}
