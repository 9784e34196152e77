//! The `stopwise` binary end to end on pure commands: JSON output and exit code 2 on bad input.
#![allow(clippy::unwrap_used)]

mod common;

use common::{stopwise, temp_dir};

use std::process::Command;

#[test]
fn score_prints_em_and_normalised_forms() {
    let (code, out, _) = stopwise(&["score", "--task", "numeric", "--gold", "1000", "The answer is $1,000."]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v, serde_json::json!({"em": 1, "pred": "1000", "gold": ["1000"]}));
    let (_, out, _) = stopwise(&["score", "--task", "text", "--gold", "Eiffel Tower", "the Tower"]);
    assert!(out.contains("\"em\":0"), "{out}");
}

#[test]
fn bad_input_exits_2_naming_file_line_and_field() {
    let dir = std::env::temp_dir().join(format!("stopwise-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.jsonl");
    std::fs::write(
        &path,
        "{\"v\":1,\"id\":\"a\",\"dataset\":\"d\",\"task\":\"numeric\",\"model\":\"m\",\"prompt_tokens\":\"x\"}\n",
    )
    .unwrap();
    let (code, _, err) = stopwise(&["replay", "--traces", path.to_str().unwrap(), "--rule", "deer"]);
    assert_eq!(code, 2);
    assert!(err.contains("bad.jsonl:1:") && err.contains("prompt_tokens"), "{err}");
    let (code, _, err) = stopwise(&["replay", "--traces", path.to_str().unwrap(), "--rule", "nope"]);
    assert_eq!(code, 2);
    assert!(err.contains("unknown preset `nope`"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

fn recorded_traces() -> String {
    format!("{}/../../data/traces/gsm8k.jsonl", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn calibrate_writes_a_certificate_that_replay_accepts_as_a_policy() {
    let dir = temp_dir("calibrate");
    let cert = dir.join("cert.json");
    let traces = recorded_traces();
    let (code, out, err) = stopwise(&[
        "calibrate",
        "--traces",
        &traces,
        "--risk",
        "disagreement",
        "--epsilon",
        "0.3",
        "--delta",
        "0.1",
        "--json",
        "--out",
        cert.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let printed: serde_json::Value = serde_json::from_str(&out).unwrap();
    let written: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cert).unwrap()).unwrap();
    assert_eq!(printed, written);
    assert_eq!(written["kind"], "stopwise-certificate");
    assert!(written["upper_bound"].as_f64().unwrap() <= 0.3);
    assert!(written["candidates"].as_array().unwrap().iter().any(|c| c["certified"] == true));

    // Replayed on the traces it was calibrated on, the certificate's policy saves what it says.
    let (code, out, err) = stopwise(&["replay", "--traces", &traces, "--rule", cert.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0, "{err}");
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    let saved = rows[0]["summary"]["token_reduction"].as_f64().unwrap();
    assert!((saved - written["token_reduction"].as_f64().unwrap()).abs() < 1e-9, "{saved} vs {written}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn calibrate_says_how_many_traces_it_would_need() {
    let dir = temp_dir("few");
    let few = dir.join("few.jsonl");
    let lines: Vec<String> =
        std::fs::read_to_string(recorded_traces()).unwrap().lines().take(5).map(String::from).collect();
    std::fs::write(&few, lines.join("\n") + "\n").unwrap();
    let (code, _, err) = stopwise(&["calibrate", "--traces", few.to_str().unwrap(), "--epsilon", "0.01"]);
    assert_eq!(code, 2);
    assert!(err.contains("nothing could be certified") && err.contains("needs at least 437 risk items"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn calibrate_and_validate_reject_bad_input_clearly() {
    let dir = temp_dir("bad");
    let traces = recorded_traces();
    for eps in ["0", "1.5", "-0.1"] {
        let (code, _, err) = stopwise(&["calibrate", "--traces", &traces, &format!("--epsilon={eps}")]);
        assert_eq!(code, 2);
        assert!(err.contains("epsilon must be in (0, 1)"), "{err}");
    }
    let (code, _, err) = stopwise(&["validate", "--traces", &traces, "--delta", "1"]);
    assert_eq!((code, err.contains("delta must be in (0, 1)")), (2, true), "{err}");
    let empty = dir.join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    let (code, _, err) = stopwise(&["calibrate", "--traces", empty.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("empty"), "{err}");
    // Traces without gold answers cannot measure an EM drop.
    let no_gold = dir.join("no_gold.jsonl");
    let stripped: Vec<String> = std::fs::read_to_string(&traces)
        .unwrap()
        .lines()
        .map(|line| {
            let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
            v["gold"] = serde_json::json!([]);
            v.to_string()
        })
        .collect();
    std::fs::write(&no_gold, stripped.join("\n") + "\n").unwrap();
    let (code, _, err) = stopwise(&["calibrate", "--traces", no_gold.to_str().unwrap(), "--risk", "em-drop"]);
    assert_eq!(code, 2);
    assert!(err.contains("needs gold answers") && err.contains("--risk disagreement"), "{err}");
    let (code, _, err) = stopwise(&["validate", "--traces", &traces, "--calibration-fraction", "1"]);
    assert_eq!((code, err.contains("calibration fraction")), (2, true), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn validate_reports_coverage_and_peers_reproducibly() {
    let traces = recorded_traces();
    let args = [
        "validate",
        "--traces",
        &traces,
        "--risk",
        "disagreement",
        "--epsilon",
        "0.3",
        "--delta",
        "0.1",
        "--splits",
        "50",
        "--seed",
        "4",
        "--json",
    ];
    let (code, out, err) = stopwise(&args);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let coverage = v["coverage"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&coverage));
    let peers: Vec<&str> = v["peers"].as_array().unwrap().iter().map(|p| p["label"].as_str().unwrap()).collect();
    assert!(peers.contains(&"dynasor-cot") && peers.contains(&"deer") && peers.contains(&"deepconf-low"), "{peers:?}");
    assert_eq!(stopwise(&args).1, out, "same seed, same result");
}

#[test]
fn report_draws_every_family_the_presets_and_the_certified_point() {
    let dir = temp_dir("report");
    let traces = recorded_traces();
    let cert = dir.join("cert.json");
    let (code, _, err) = stopwise(&[
        "calibrate",
        "--traces",
        &traces,
        "--risk",
        "disagreement",
        "--epsilon",
        "0.3",
        "--out",
        cert.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let out = dir.join("report");
    let (code, _, err) = stopwise(&[
        "report",
        "--traces",
        &traces,
        "--certificate",
        cert.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    for text in [
        "<svg",
        "budget",
        "consistency",
        "confidence",
        "logprob_window",
        "dynasor-cot",
        "deer",
        "certified: ",
        "oracle (bound)",
    ] {
        assert!(html.contains(text), "report lacks `{text}`");
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// `stopwise serve` in front of an HTTP upstream (no model to load): it prints the address it
/// bound, serves `/v1/models` under the given name, and a bad config exits 2 naming the key.
#[test]
fn serve_listens_and_routes_the_model_name() {
    use std::io::{BufRead, BufReader, Read, Write};
    let mut child = Command::new(env!("CARGO_BIN_EXE_stopwise"))
        .args(["serve", "--listen", "127.0.0.1:0", "--upstream", "http://127.0.0.1:9/v1", "--model-name", "qwen"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let address = line.trim().strip_prefix("listening on http://").unwrap().to_owned();
    let mut socket = std::net::TcpStream::connect(&address).unwrap();
    write!(socket, "GET /v1/models HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    socket.read_to_string(&mut response).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains(r#""id":"qwen""#), "{response}");

    let dir = temp_dir("serve-config");
    let config = dir.join("stopwise.toml");
    std::fs::write(&config, "[[routes]]\nmodel = \"m\"\nupstream = \"embedded\"\npolicy = \"dynasor\"\n").unwrap();
    let (code, _, err) = stopwise(&["serve", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("routes[0].policy") && err.contains("unknown preset `dynasor`"), "{err}");
}

#[test]
fn serve_shuts_down_cleanly_on_sigterm() {
    use std::io::{BufRead, BufReader};
    // An HTTP route needs no model: the process starts in a moment.
    let dir = temp_dir("sigterm");
    let config = dir.join("stopwise.toml");
    std::fs::write(&config, "[[routes]]\nmodel = \"m\"\nupstream = \"http://127.0.0.1:9/v1\"\npolicy = \"never\"\n")
        .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_stopwise"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("listening on") {
        line.clear();
        assert!(stdout.read_line(&mut line).unwrap() > 0, "serve exited before listening");
    }
    let signals = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
    let signals: Vec<&str> = signals.lines().filter(|l| l.starts_with("Sig")).collect();
    let killed = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    // Bounded: a server that ignores the signal fails the test instead of hanging it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("still running 20 s after SIGTERM; its signal state: {signals:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut rest).unwrap();
    assert!(status.success(), "exit {status:?}; stderr: {rest}");
    assert!(rest.contains("shutting down"), "{rest}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sweep_replay_and_calibrate_refuse_duplicate_ids_naming_both_lines() {
    let dir = temp_dir("dup");
    let first_line = std::fs::read_to_string(recorded_traces()).unwrap().lines().next().unwrap().to_owned();
    let path = dir.join("dup.jsonl");
    std::fs::write(&path, format!("{first_line}\n{first_line}\n")).unwrap();
    let file = path.to_str().unwrap();
    for args in [
        vec!["sweep", "--traces", file],
        vec!["replay", "--traces", file, "--rule", "deer"],
        vec!["calibrate", "--traces", file, "--risk", "disagreement"],
    ] {
        let (code, _, err) = stopwise(&args);
        assert_eq!(code, 2, "{args:?}");
        assert!(err.contains("dup.jsonl:2:") && err.contains("dup.jsonl:1") && err.contains("appears twice"), "{err}");
    }
    std::fs::remove_dir_all(&dir).ok();
}
