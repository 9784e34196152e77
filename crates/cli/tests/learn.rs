//! `stopwise train`, `export-sft` and `learned` rules end to end: deterministic model files, the
//! comparison table, clear errors for corrupt or mismatched model files and for traces without
//! reasoning text, and fine-tuning examples from a hand-written trace file.
#![allow(clippy::unwrap_used)]

mod common;

use common::{stopwise, temp_dir};

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/traces_with_text.jsonl")
}

/// 40 traces whose answer settles on the gold answer after a few wrong probes.
fn write_traces(path: &Path) {
    let mut lines = String::new();
    for i in 0..40u32 {
        let probes = 3 + i % 5;
        let settle = i % probes;
        let checkpoints: Vec<Value> = (0..probes)
            .map(|k| {
                let answer = if k >= settle { "42".to_string() } else { format!("{}", (i * 7 + k * 3) % 40) };
                let p = if k >= settle { 0.9 } else { 0.5 + 0.01 * f64::from(k) };
                json!({"tokens": 32 * (k + 1), "answer": answer, "probe_text": answer, "answer_tokens": 3,
                       "mean_prob": p, "min_prob": p / 2.0, "segment_logprob": -0.5, "segment_entropy": 1.0})
            })
            .collect();
        let trace = json!({"v": 1, "id": format!("t{i}"), "dataset": "synthetic", "task": "numeric",
            "question": "What is six times seven?", "gold": ["42"], "model": "m", "prompt_tokens": 30,
            "probe": {"suffix": "\nFinal answer: ", "max_tokens": 8, "interval": 32},
            "checkpoints": checkpoints, "final": {"tokens": 32 * probes + 20, "answer": "42", "finish_reason": "stop"}});
        lines.push_str(&trace.to_string());
        lines.push('\n');
    }
    std::fs::write(path, lines).unwrap();
}

#[test]
fn train_is_deterministic_and_compares_on_the_test_split() {
    let dir = temp_dir("train");
    let traces = dir.join("t.jsonl");
    write_traces(&traces);
    let (t, a, b) = (traces.to_str().unwrap(), dir.join("a.json"), dir.join("b.json"));
    let args = |out: &Path| {
        [
            "train",
            "--traces",
            t,
            "--seed",
            "5",
            "--epochs",
            "40",
            "--test-fraction",
            "0.3",
            "--out",
            out.to_str().unwrap(),
        ]
        .map(String::from)
    };
    let (code, table, err) = stopwise(&args(&a).iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 0, "{err}");
    assert!(table.contains("best threshold on the test split, EM drop <= 1.0 pt"), "{table}");
    assert!(table.contains("learned learned(") && table.contains("oracle (bound)"), "{table}");
    assert!(table.contains("confidence confidence(") && table.contains("dynasor-cot"), "{table}");
    stopwise(&args(&b).iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    let model: Value = serde_json::from_str(&std::fs::read_to_string(&a).unwrap()).unwrap();
    assert_eq!(model["schema_version"], 1);
    assert_eq!(model["training"]["config"]["seed"], 5);

    // The model file as a rule, by path.
    let rule = json!({"type": "learned", "model": a, "threshold": 0.5}).to_string();
    let (code, out, err) = stopwise(&["replay", "--traces", t, "--rule", &rule, "--json"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("learned("), "{out}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn corrupt_and_mismatched_model_files_are_clear_errors() {
    let dir = temp_dir("bad-model");
    let traces = dir.join("t.jsonl");
    write_traces(&traces);
    let t = traces.to_str().unwrap();
    let model = dir.join("m.json");
    let (code, _, err) = stopwise(&["train", "--traces", t, "--epochs", "5", "--out", model.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let text = std::fs::read_to_string(&model).unwrap();
    let replay_with = |contents: &str| {
        let path = dir.join("bad.json");
        std::fs::write(&path, contents).unwrap();
        let rule = json!({"type": "learned", "model": path, "threshold": 0.5}).to_string();
        stopwise(&["replay", "--traces", t, "--rule", &rule])
    };
    let (code, _, err) = replay_with(&text[..text.len() / 2]);
    assert_eq!(code, 2);
    assert!(err.contains("bad.json") && err.contains("not a stopper model"), "{err}");
    let (code, _, err) = replay_with(&text.replace("\"schema_version\": 1", "\"schema_version\": 9"));
    assert_eq!(code, 2);
    assert!(err.contains("feature schema v9 but this build computes v1"), "{err}");
    let (code, _, err) = replay_with(&text.replace("\"mean_prob\"", "\"mean_probability\""));
    assert_eq!(code, 2);
    assert!(err.contains("`mean_probability` instead of `mean_prob`"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn export_sft_writes_chat_examples_where_the_probe_was_wrong_and_the_full_answer_right() {
    let dir = temp_dir("sft");
    let out = dir.join("sft.jsonl");
    let (code, stdout, err) =
        stopwise(&["export-sft", "--traces", fixture().to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(stdout.starts_with("2 examples from 1 of 3 traces (1 without gold skipped)"), "{stdout}");
    let lines: Vec<Value> =
        std::fs::read_to_string(&out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    let messages = &lines[0]["messages"];
    assert_eq!(
        messages.as_array().unwrap().iter().map(|m| m["role"].as_str().unwrap()).collect::<Vec<_>>(),
        ["system", "user", "assistant"]
    );
    assert!(messages[0]["content"].as_str().unwrap().contains("math tutor"));
    assert_eq!(messages[1]["content"], "Tom has 3 apples and buys 4 more. How many apples does he have?");
    assert_eq!(messages[2]["content"], "Tom starts with 3 apples.\n\nFinal answer: 7");
    assert_eq!(lines[1]["messages"][2]["content"], "Tom starts with 3 apples. He buys 4 more.\n\nFinal answer: 7");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn export_sft_refuses_traces_without_reasoning_text() {
    let dir = temp_dir("sft-no-text");
    let traces = dir.join("t.jsonl");
    write_traces(&traces);
    let (code, _, err) =
        stopwise(&["export-sft", "--traces", traces.to_str().unwrap(), "--out", dir.join("o.jsonl").to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("trace `t0` has no reasoning text") && err.contains("--keep-text"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_trained_model_is_a_family_for_sweep_and_calibrate_and_its_certificate_replays() {
    let dir = temp_dir("calibrate-learned");
    let traces = dir.join("t.jsonl");
    write_traces(&traces);
    let (t, model, cert) = (traces.to_str().unwrap(), dir.join("m.json"), dir.join("cert.json"));
    let (code, _, err) =
        stopwise(&["train", "--traces", t, "--seed", "3", "--epochs", "40", "--out", model.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let family = format!("learned:{}", model.display());

    let (code, out, err) = stopwise(&["sweep", "--traces", t, "--rule", &family, "--thresholds", "8"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("learned("), "{out}");

    let (code, out, err) = stopwise(&[
        "calibrate",
        "--traces",
        t,
        "--rule",
        &family,
        "--rule",
        "budget",
        "--risk",
        "disagreement",
        "--epsilon",
        "0.2",
        "--json",
        "--out",
        cert.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let certificate: Value = serde_json::from_str(&out).unwrap();
    let candidates = certificate["candidates"].as_array().unwrap();
    assert!(candidates.iter().any(|c| c["label"].as_str().unwrap().starts_with("learned(")), "{out}");
    assert!(certificate["upper_bound"].as_f64().unwrap() <= 0.2);
    let (code, out, err) = stopwise(&["replay", "--traces", t, "--rule", cert.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0, "{err}");
    let rows: Value = serde_json::from_str(&out).unwrap();
    let saved = rows[0]["summary"]["token_reduction"].as_f64().unwrap();
    assert!((saved - certificate["token_reduction"].as_f64().unwrap()).abs() < 1e-9, "{saved} vs {out}");

    let (code, _, err) = stopwise(&["calibrate", "--traces", t, "--rule", "learned", "--epsilon", "0.2"]);
    assert_eq!(code, 2);
    assert!(err.contains("learned:stopper.json"), "{err}");
    let (code, _, err) = stopwise(&["sweep", "--traces", t, "--rule", "learned:/nonexistent/m.json"]);
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/m.json"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_policy_file_names_its_model_relative_to_itself() {
    let dir = temp_dir("policy-file-model");
    let traces = dir.join("t.jsonl");
    write_traces(&traces);
    std::fs::create_dir_all(dir.join("rules")).unwrap();
    let model = dir.join("rules/m.json");
    let t = traces.to_str().unwrap();
    let (code, _, err) =
        stopwise(&["train", "--traces", t, "--seed", "3", "--epochs", "40", "--out", model.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    // The test runs in the crate's folder: `m.json` is only found beside the policy file.
    let policy = dir.join("rules/policy.json");
    std::fs::write(&policy, r#"{"type":"learned","model":"m.json","threshold":0.9}"#).unwrap();
    let (code, from_file, err) = stopwise(&["replay", "--traces", t, "--rule", policy.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0, "{err}");
    let inline = format!(r#"{{"type":"learned","model":"{}","threshold":0.9}}"#, model.display());
    let (code, named_inline, err) = stopwise(&["replay", "--traces", t, "--rule", &inline, "--json"]);
    assert_eq!(code, 0, "{err}");
    let rows = |out: &str| serde_json::from_str::<Value>(out).unwrap()[0]["summary"].clone();
    assert_eq!(rows(&from_file), rows(&named_inline));
    // `never` is a rule name as well.
    let (code, out, err) = stopwise(&["replay", "--traces", t, "--rule", "never", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(rows(&out)["token_reduction"].as_f64(), Some(0.0));
    std::fs::remove_dir_all(&dir).ok();
}
