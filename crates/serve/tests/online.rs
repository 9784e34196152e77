//! The production loop on the embedded default model: every request audited, the live estimate
//! in `/admin/online` and `/metrics`, and a setting too aggressive for the traffic falling back
//! to no stopping within the window, recorded in the store. The store's audits, replayed offline,
//! give the live figures again.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use stopwise_core::online::Estimator;
use stopwise_core::rules::PolicySpec;
use stopwise_db::{Selection, Store};
use stopwise_engine::Engine;

const QUESTIONS: &str = include_str!("../../../data/eval/gsm8k_test_500.jsonl");

/// `promtool check metrics` (Debian's prometheus package) on an exposition: its exit code and
/// what it printed.
fn promtool_check(metrics: &str) -> (i32, String) {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is not installed: scripts/install-deps --test installs Debian's prometheus package");
    child.stdin.take().unwrap().write_all(metrics.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

fn questions() -> Vec<String> {
    QUESTIONS
        .lines()
        .take(40)
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["question"].as_str().unwrap().to_owned())
        .collect()
}

/// A 16-token budget: SmolLM2's probed answer at 16 tokens rarely is its final one.
fn config(url: &str) -> String {
    format!(
        r#"
admin_token = "sesame"

[store]
url = "{url}"

[[routes]]
model = "default"
upstream = "embedded"
task = "numeric"
policy = {{ type = "budget", max_tokens = 16 }}
probe = {{ interval = 16 }}
audit = {{ fraction = 1.0, max_concurrent = 1 }}
online = {{ epsilon = 0.2, delta = 0.2, risk = "disagreement", window = 50, promote = "off" }}
"#
    )
}

async fn online(base: &str) -> Value {
    let client = reqwest::Client::new();
    let response = client.get(format!("{base}/admin/online")).bearer_auth("sesame").send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.json::<Value>().await.unwrap()["routes"]["default"].clone()
}

/// Waits until `audits` audits are in the window (each audit runs after its request).
async fn wait_for_audits(base: &str, audits: u64) -> Value {
    for _ in 0..600 {
        let state = online(base).await;
        if state["audits_in_window"].as_u64().unwrap() >= audits {
            return state;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the audits never came in");
}

#[tokio::test]
async fn an_aggressive_setting_falls_back_within_the_window_and_the_store_replays_it() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("stopwise.db").display());
    let base = start(&config(&url), Some(engine() as Arc<dyn Engine>));
    let first = online(&base).await;
    let needed = first["min_audits"].as_u64().unwrap();
    assert_eq!((first["active"].as_u64(), needed), (Some(0), 8), "{first}");
    // The admin API is behind the token.
    let refused = reqwest::get(format!("{base}/admin/online")).await.unwrap();
    assert_eq!(refused.status(), 401);

    let mut served = Vec::new();
    let mut fallback_after = None;
    for (i, question) in questions().iter().enumerate() {
        let response: Value =
            post(&base, &chat("default", question, 64, false, Value::Null)).await.json().await.unwrap();
        served.push(response);
        let state = wait_for_audits(&base, i as u64 + 1).await;
        if state["active"] == json!(1) {
            fallback_after = Some(i + 1);
            break;
        }
    }
    let fallback_after = fallback_after.expect("no fallback in 40 audits");
    assert_eq!(fallback_after as u64, needed, "the fallback comes as soon as the window can tell");
    let state = online(&base).await;
    let estimates = state["estimates"].as_array().unwrap();
    assert!(estimates[0]["bound"].as_f64().unwrap() > 0.2, "{state}");
    assert_eq!(estimates[1]["label"], "never");
    assert_eq!(state["changes"][0]["kind"], "fallback");
    // Before the fallback the budget stopped the requests; after it nothing stops them.
    assert_eq!(served[0]["stopwise"]["stopped"], true);
    let after: Value =
        post(&base, &chat("default", "What is 2 + 3?", 24, false, Value::Null)).await.json().await.unwrap();
    assert!(after.get("stopwise").is_none(), "stopping is off after the fallback: {after}");

    let metrics = reqwest::get(format!("{base}/metrics")).await.unwrap().text().await.unwrap();
    for wanted in [
        r#"stopwise_policy_changes_total{model="default",kind="fallback"} 1"#.to_owned(),
        r#"stopwise_online_active_setting{model="default"} 1"#.to_owned(),
        format!(r#"stopwise_audits_total{{model="default",result="run"}} {fallback_after}"#),
    ] {
        assert!(metrics.lines().any(|l| l == wanted), "no `{wanted}` in\n{metrics}");
    }

    // Prometheus's own linter takes the exposition as it is.
    let (code, lint) = promtool_check(&metrics);
    assert_eq!(code, 0, "promtool check metrics: {lint}");

    // The store has the change, every served trace and every audit; replayed offline with the
    // same ladder, the audits give the live estimate again.
    wait_for_audits(&base, fallback_after as u64 + 1).await;
    let store = Store::open(&url).await.unwrap();
    let changes = store.changes("default").await.unwrap();
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].1, "fallback");
    let mut audits = Vec::new();
    store
        .traces(&Selection { complete_only: true, ..Default::default() }, |t| {
            audits.push(t);
            true
        })
        .await
        .unwrap();
    assert_eq!(audits.len(), fallback_after + 1);
    let budget = PolicySpec::parse(r#"{"type":"budget","max_tokens":16}"#).unwrap();
    let settings = stopwise_core::online::OnlineSettings {
        epsilon: 0.2,
        delta: 0.2,
        risk: stopwise_core::certify::Risk::Disagreement,
        window: 50,
        promote: stopwise_core::online::Promote::Off,
        limits: stopwise_core::replay::Limits::default(),
    };
    let mut offline = Estimator::new(vec![budget], 0, settings).unwrap();
    for audit in &audits[..fallback_after] {
        offline.observe(audit);
    }
    assert_eq!(offline.active(), 1, "offline replay falls back at the same audit");
    // serde_json reads floats back to within an ulp, not exactly.
    for (offline, live) in offline.estimates().iter().zip(state["estimates"].as_array().unwrap()) {
        assert_eq!(
            (offline.n, offline.losses, offline.certified),
            (live["n"].as_u64().unwrap(), live["losses"].as_u64().unwrap(), live["certified"].as_bool().unwrap())
        );
        for (a, field) in
            [(offline.risk, "risk"), (offline.bound, "bound"), (offline.token_reduction, "token_reduction")]
        {
            assert!((a - live[field].as_f64().unwrap()).abs() < 1e-12, "{field}: {a} vs {}", live[field]);
        }
    }
}
