#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions
//! Bad trace files give one clear error naming the file and line; good ones stream in every
//! compression the reader accepts.

use std::io::Write;
use std::path::{Path, PathBuf};

use stopwise_store::{read_all, recorded_ids, TraceFiles, TraceReader, TraceWriter};

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

fn with_id(id: &str) -> String {
    GOOD.replace(r#""id":"a""#, &format!(r#""id":"{id}""#))
}

#[test]
fn a_last_line_without_its_newline_is_recorded_again_not_lost() {
    // A crash between a line and its newline used to leave a line that parsed: resume counted it
    // as recorded, then the append cut it off as torn, and the trace was gone with exit 0.
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "run.jsonl", format!("{GOOD}\n{}", with_id("b")).as_bytes());
    let done = recorded_ids(&path).unwrap();
    assert!(done.contains("a") && !done.contains("b"), "{done:?}");
    let b = stopwise_core::trace::parse_line(&with_id("b")).unwrap();
    TraceWriter::append(&path).unwrap().write(&b).unwrap();
    let ids: Vec<String> = read_all(&path).unwrap().into_iter().map(|t| t.id).collect();
    assert_eq!(ids, ["a", "b"]);
}

#[test]
fn a_bad_line_before_the_end_stops_the_resume_naming_it() {
    // It used to be taken for a torn end: everything after it was recorded again (duplicates)
    // and the bad line stayed in place.
    let dir = tempfile::tempdir().unwrap();
    let body = format!("{GOOD}\n{{\"v\":1,\n{}\n", with_id("c"));
    let path = write(dir.path(), "run.jsonl", body.as_bytes());
    let err = recorded_ids(&path).unwrap_err().to_string();
    assert!(err.contains("run.jsonl:2:"), "{err}");
    let twice = write(dir.path(), "twice.jsonl", format!("{GOOD}\n{GOOD}\n").as_bytes());
    let err = recorded_ids(&twice).unwrap_err().to_string();
    assert!(err.contains("twice.jsonl:2:") && err.contains("twice.jsonl:1"), "{err}");
}

#[test]
fn ids_must_be_unique_across_files_and_both_places_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let first = write(dir.path(), "first.jsonl", format!("{GOOD}\n{}\n", with_id("b")).as_bytes());
    let second = write(dir.path(), "second.jsonl", format!("{}\n\n{}\n", with_id("c"), with_id("b")).as_bytes());
    let err = TraceFiles::open(&[first.clone(), second.clone()]).collect::<Result<Vec<_>, _>>().unwrap_err();
    let err = err.to_string();
    assert!(err.contains("second.jsonl:3:") && err.contains("first.jsonl:2") && err.contains("`b`"), "{err}");
    let ids: Vec<String> = TraceFiles::open(&[first]).map(|t| t.unwrap().id).collect();
    assert_eq!(ids, ["a", "b"]);
    let empty = write(dir.path(), "empty.jsonl", b"");
    let err = TraceFiles::open(&[second, empty]).collect::<Result<Vec<_>, _>>().unwrap_err().to_string();
    assert!(err.contains("empty.jsonl") && err.contains("no traces"), "{err}");
}

#[test]
fn an_output_file_is_replaced_whole_or_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "cert.json", b"{\"old\": true}\n");
    // A writer that fails half-way (as a crash or a full disk would) leaves the old file as it was;
    // `std::fs::write` would have truncated it first.
    let failed = stopwise_store::replace_file(&path, |out| {
        out.write_all(b"{\"new\": ")?;
        Err(std::io::Error::other("disk full"))
    });
    assert!(failed.unwrap_err().to_string().contains("disk full"));
    assert_eq!(std::fs::read(&path).unwrap(), b"{\"old\": true}\n");
    stopwise_store::write_file(&path, b"{\"new\": true}\n").unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"{\"new\": true}\n");
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["cert.json"], "no temporary file is left behind");
    let err = stopwise_store::write_file(&dir.path().join("missing/cert.json"), b"x").unwrap_err().to_string();
    assert!(err.contains("missing/cert.json"), "{err}");
}
