//! Commands that read traces read a trace store as they read files: the recorded GSM8K traces
//! put in a SQLite store as audits give `sweep` exactly the figures the file gives, and `export`
//! gives the traces back.
#![allow(clippy::unwrap_used)]

mod common;

use common::{stopwise, temp_dir};
use stopwise_core::trace::{parse_line, Served, Trace};
use stopwise_db::Store;

fn recorded() -> Vec<Trace> {
    let path = format!("{}/../../data/traces/gsm8k.jsonl", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(path).unwrap().lines().map(|l| parse_line(l).unwrap()).collect()
}

fn as_served(mut trace: Trace, i: u64, complete: bool) -> Trace {
    trace.served = Some(Served {
        route: "r".into(),
        response_id: trace.id.clone(),
        policy: "never".into(),
        policy_version: "v".into(),
        started_ms: 1000 + i,
        duration_ms: 1,
        stopped_at: None,
        delivered_tokens: trace.final_.tokens,
        complete,
        audit: complete,
    });
    trace
}

#[test]
fn sweep_reads_a_store_as_it_reads_the_file_and_export_gives_the_traces_back() {
    let dir = temp_dir("store");
    let url = format!("sqlite://{}", dir.join("s.db").display());
    let traces = recorded();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let store = Store::open(&url).await.unwrap();
        let audits: Vec<Trace> =
            traces.iter().cloned().enumerate().map(|(i, t)| as_served(t, i as u64, true)).collect();
        store.put_traces(&audits).await.unwrap();
        // A served request stopped early cannot replay: sweeps leave it out.
        let mut stopped = as_served(traces[0].clone(), 0, false);
        stopped.served.as_mut().unwrap().response_id = "stopped".into();
        stopped.id = "stopped".into();
        store.put_traces(&[stopped]).await.unwrap();
    });
    let file = format!("{}/../../data/traces/gsm8k.jsonl", env!("CARGO_MANIFEST_DIR"));
    let (code, from_file, err) = stopwise(&["sweep", "--traces", &file, "--thresholds", "8", "--json"]);
    assert_eq!(code, 0, "{err}");
    let (code, from_store, err) = stopwise(&["sweep", "--traces", &url, "--thresholds", "8", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(from_store, from_file);
    let (code, _, err) = stopwise(&["sweep", "--traces", &url, "--route", "elsewhere"]);
    assert_eq!(code, 2);
    assert!(err.contains("no traces"), "{err}");
    let (code, last, _) = stopwise(&["replay", "--traces", &url, "--last", "10", "--rule", "never", "--json"]);
    assert_eq!(code, 0);
    let rows: serde_json::Value = serde_json::from_str(&last).unwrap();
    assert_eq!(rows[0]["summary"]["items"], 10, "{last}");

    let out = dir.join("export.jsonl");
    let (code, _, err) = stopwise(&["export", "--store", &url, "--out", out.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let exported: Vec<Trace> = std::fs::read_to_string(&out).unwrap().lines().map(|l| parse_line(l).unwrap()).collect();
    assert_eq!(exported.len(), traces.len() + 1, "every served trace, stopped ones too");
    let (code, _, _) = stopwise(&["export", "--store", &url, "--complete-only", "--out", out.to_str().unwrap()]);
    assert_eq!(code, 0);
    let exported: Vec<Trace> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| Trace { served: None, ..parse_line(l).unwrap() })
        .collect();
    assert_eq!(exported, traces);
    let (code, _, err) = stopwise(&["export", "--store", "mysql://x", "--out", out.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("sqlite://PATH"), "{err}");
    assert_eq!(std::fs::read_to_string(&out).unwrap().lines().count(), traces.len(), "a failed export leaves the file");
    std::fs::remove_dir_all(&dir).ok();
}
