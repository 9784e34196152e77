//! What every end-to-end test of the `stopwise` binary needs: running it, and a scratch folder.
#![allow(clippy::unwrap_used, dead_code)]

use std::path::PathBuf;
use std::process::Command;

/// Runs the binary; its exit code, stdout and stderr.
pub fn stopwise(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_stopwise")).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// A fresh folder for one test of this process.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("stopwise-test-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
