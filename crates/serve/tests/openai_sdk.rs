//! The official `openai` Python SDK (from PyPI) against `stopwise serve` on the embedded model:
//! it must parse the stream, the stop chunk with its `stopwise` extension, and the error bodies.
//! CI installs the SDK (`.ci/run`); elsewhere the test fails without it unless
//! `STOPWISE_SKIP_PYTHON_TESTS=1` says to skip.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::sync::Arc;

use common::*;
use serde_json::Value;
use stopwise_engine::Engine;

#[test]
fn the_openai_sdk_streams_a_stopped_answer_and_raises_on_errors() {
    if !python_has("openai") {
        return;
    }
    let base = start("[[routes]]\nmodel = \"default\"\nupstream = \"embedded\"\ntask = \"numeric\"\n", {
        Some(engine() as Arc<dyn Engine>)
    });
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/openai_sdk.py");
    let output = Command::new("python3").args([script, &base, QUESTION]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the SDK script failed:\n{stderr}");
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    eprintln!("{}", serde_json::to_string_pretty(&report).unwrap());
    let streamed = &report["streamed"];
    assert_eq!(streamed["finish_reason"], "stop");
    assert_eq!(streamed["stopwise"]["stopped"], true);
    assert_eq!(streamed["stopwise"]["checkpoint_tokens"], 64);
    assert!(streamed["content"].as_str().unwrap().contains("**Final Answer**: "));
    assert!(streamed["usage"]["completion_tokens"].as_u64().unwrap() >= 64);
    assert_eq!(report["whole"]["usage"]["completion_tokens"], 16);
    assert!(!report["whole"]["content"].as_str().unwrap().is_empty());
    assert_eq!(report["error"]["status"], 404);
    assert_eq!(report["error"]["code"], "model_not_found");
}
