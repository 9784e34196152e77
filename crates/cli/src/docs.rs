//! `stopwise completions` and `stopwise man`: shell completions and man pages, generated from the
//! same clap definition that parses the arguments, so they never drift from it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::CommandFactory;

use crate::args::Cli;

pub fn completions(shell: clap_complete::Shell) {
    clap_complete::generate(shell, &mut Cli::command(), "stopwise", &mut std::io::stdout());
}

/// Writes `stopwise.1` and one page per command (`stopwise-run.1`, `stopwise-model-fetch.1`, ...)
/// into `out`; returns the top page's path.
pub fn man_pages(out: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(out).with_context(|| format!("{}: cannot create", out.display()))?;
    let mut command = Cli::command().disable_help_subcommand(true);
    // Building names every subcommand after its parents (`stopwise-run`), as its page is called.
    command.build();
    write_pages(command, out)?;
    Ok(out.join("stopwise.1"))
}

fn write_pages(command: clap::Command, out: &Path) -> Result<()> {
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_pages(sub.clone(), out)?;
    }
    let page = clap_mangen::Man::new(command);
    let mut text = Vec::new();
    page.render(&mut text)?;
    stopwise_store::write_file(&out.join(page.get_filename()), &text)?;
    Ok(())
}
