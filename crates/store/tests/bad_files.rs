#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions
//! Bad trace files give one clear error naming the file and line; good ones stream in every
//! compression the reader accepts.

use std::io::Write;
use std::path::{Path, PathBuf};

use stopwise_store::{read_all, recorded_ids, TraceReader, TraceWriter};

const GOOD: &str = r#"{"v":1,"id":"a","dataset":"gsm8k","task":"numeric","gold":["4"],"model":"m","prompt_tokens":5,"probe":{"suffix":"\nFinal answer: ","max_tokens":8,"interval":32},"checkpoints":[{"tokens":32,"answer":"4","answer_tokens":2,"mean_prob":0.9,"min_prob":0.8,"segment_logprob":-0.3,"segment_entropy":0.5}],"final":{"tokens":40,"answer":"4","finish_reason":"stop"}}"#;

fn write(dir: &Path, name: &str, body: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, body).unwrap();
    path
}

fn error_of(path: &Path) -> String {
    read_all(path).unwrap_err().to_string()
}

#[test]
fn each_bad_file_gives_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let truncated = format!("{GOOD}\n{}", &GOOD[..GOOD.len() / 2]);
    let err = error_of(&write(d, "truncated.jsonl", truncated.as_bytes()));
    assert!(err.contains("truncated.jsonl:2:") && err.contains("EOF"), "{err}");

    let wrong_type = GOOD.replace(r#""prompt_tokens":5"#, r#""prompt_tokens":"five""#);
    let err = error_of(&write(d, "types.jsonl", wrong_type.as_bytes()));
    assert!(err.contains("types.jsonl:1:") && err.contains("prompt_tokens"), "{err}");

    let version = GOOD.replace(r#""v":1"#, r#""v":3"#);
    let err = error_of(&write(d, "version.jsonl", version.as_bytes()));
    assert!(err.contains("version.jsonl:1:") && err.contains("unsupported trace version 3"), "{err}");

    let err = error_of(&write(d, "empty.jsonl", b"\n\n"));
    assert!(err.contains("empty.jsonl") && err.contains("no traces"), "{err}");

    let huge = format!("{{\"v\":1,\"id\":\"{}\"}}\n", "x".repeat(10 * 1024 * 1024));
    let err = error_of(&write(d, "huge.jsonl", huge.as_bytes()));
    assert!(err.contains("huge.jsonl:1:") && err.contains("more than the limit"), "{err}");

    let twice = format!("{GOOD}\n{GOOD}\n");
    let err = error_of(&write(d, "twice.jsonl", twice.as_bytes()));
    assert!(err.contains("twice.jsonl:2:") && err.contains("appears twice"), "{err}");
}

#[test]
fn reads_plain_gzip_and_zstd() {
    let dir = tempfile::tempdir().unwrap();
    let body = format!("{GOOD}\n{}\n", GOOD.replace(r#""id":"a""#, r#""id":"b""#));
    let plain = write(dir.path(), "t.jsonl", body.as_bytes());
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(body.as_bytes()).unwrap();
    let gz = write(dir.path(), "t.jsonl.gz", &gz.finish().unwrap());
    let zst = write(dir.path(), "t.jsonl.zst", &zstd::encode_all(body.as_bytes(), 3).unwrap());
    for path in [plain, gz, zst] {
        let ids: Vec<String> = TraceReader::open(&path).unwrap().map(|t| t.unwrap().id).collect();
        assert_eq!(ids, ["a", "b"], "{}", path.display());
    }
}

#[test]
fn appending_after_a_crash_mid_line_keeps_every_finished_trace() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "run.jsonl", format!("{GOOD}\n{}", &GOOD[..50]).as_bytes());
    assert_eq!(recorded_ids(&path).unwrap().len(), 1, "the torn last line is not counted as recorded");
    let trace = stopwise_core::trace::parse_line(&GOOD.replace(r#""id":"a""#, r#""id":"c""#)).unwrap();
    TraceWriter::append(&path).unwrap().write(&trace).unwrap();
    // The torn line (never counted as recorded) is cut off, so the file stays valid.
    let ids: Vec<String> = read_all(&path).unwrap().into_iter().map(|t| t.id).collect();
    assert_eq!(ids, ["a", "c"]);
}
