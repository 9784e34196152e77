//! Stamps the git commit into `stopwise --version`, so a binary says what it was built from. Outside
//! a git checkout (a source tarball) the version says `unknown commit`.

use std::process::Command;

fn main() {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let commit = match git(&["rev-parse", "--short=12", "HEAD"]) {
        Some(hash) => hash,
        None => "unknown commit".to_owned(),
    };
    println!("cargo:rustc-env=STOPWISE_GIT_COMMIT={commit}");
    // Rebuild when HEAD moves (a commit or a checkout); the paths are relative to this crate.
    if let Some(head) = git(&["rev-parse", "--git-path", "HEAD"]) {
        println!("cargo:rerun-if-changed={head}");
    }
    // A commit moves the branch, not HEAD; the branch is a loose file or a line in packed-refs.
    let branch = git(&["rev-parse", "--symbolic-full-name", "HEAD"]).filter(|r| r.starts_with("refs/"));
    for name in branch.iter().map(String::as_str).chain(["packed-refs"]) {
        if let Some(path) = git(&["rev-parse", "--git-path", name]).filter(|p| std::path::Path::new(p).exists()) {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}
