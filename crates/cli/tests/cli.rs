//! The `stopwise` binary end to end on pure commands: JSON output and exit code 2 on bad input.
#![allow(clippy::unwrap_used)]

use std::process::Command;

fn stopwise(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_stopwise")).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

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
