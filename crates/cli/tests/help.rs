//! The CLI explains itself: the version names the commit, completions and man pages come from the
//! same definition as the parser, and mistakes get a suggestion.
#![allow(clippy::unwrap_used)]

mod common;

use common::{stopwise, temp_dir};

#[test]
fn version_names_the_git_commit_it_was_built_from() {
    let (code, out, _) = stopwise(&["--version"]);
    assert_eq!(code, 0);
    let head = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    let expected = head.unwrap_or_else(|| "unknown commit".to_owned());
    assert_eq!(out.trim(), format!("stopwise {} ({expected})", env!("CARGO_PKG_VERSION")));
}

#[test]
fn completions_cover_every_command_and_flag() {
    let (code, out, err) = stopwise(&["completions", "bash"]);
    assert_eq!(code, 0, "{err}");
    for word in ["calibrate", "serve", "--probe-interval", "--epsilon", "completions"] {
        assert!(out.contains(word), "bash completion lacks {word}");
    }
    let (code, out, _) = stopwise(&["completions", "zsh"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("#compdef stopwise"), "{}", &out[..out.len().min(80)]);
    let (code, _, err) = stopwise(&["completions", "tcsh"]);
    assert_eq!(code, 2);
    assert!(err.contains("possible values") && err.contains("bash"), "{err}");
}

#[test]
fn man_pages_document_each_command_with_its_flags() {
    let dir = temp_dir("man");
    let (code, out, err) = stopwise(&["man", "--out", dir.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), dir.join("stopwise.1").display().to_string());
    let top = std::fs::read_to_string(dir.join("stopwise.1")).unwrap();
    assert!(top.contains(".TH stopwise 1") && top.contains("calibrate"), "{top}");
    let run = std::fs::read_to_string(dir.join("stopwise-run.1")).unwrap();
    assert!(run.contains("probe\\-interval") && run.contains("Probe the answer every"), "{run}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn mistyped_flags_and_commands_get_a_suggestion() {
    let (code, _, err) = stopwise(&["run", "--datset", "x.jsonl"]);
    assert_eq!(code, 2);
    assert!(err.contains("--dataset"), "{err}");
    let (code, _, err) = stopwise(&["calibrat"]);
    assert_eq!(code, 2);
    assert!(err.contains("calibrate"), "{err}");
}

#[test]
fn every_command_shows_an_example_in_its_help() {
    for command in ["demo", "run", "score", "replay", "calibrate", "validate", "report", "serve", "sweep", "train"] {
        let (code, out, _) = stopwise(&[command, "--help"]);
        assert_eq!(code, 0);
        assert!(out.contains("Example") && out.contains(&format!("stopwise {command}")), "{command}: {out}");
    }
}
