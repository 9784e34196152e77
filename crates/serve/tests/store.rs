//! Every served request leaves a trace in the store, and feedback joins it: `stopwise serve` on
//! the embedded default model with a real SQLite file, and two replicas sharing one real Postgres
//! server (started by `scripts/test`, which exports `STOPWISE_TEST_POSTGRES_URL`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use common::*;
use serde_json::{json, Value};
use stopwise_core::trace::Trace;
use stopwise_db::{Selection, Store};
use stopwise_engine::Engine;

fn config(store_url: &str, grace_ms: u64) -> String {
    format!(
        r#"
[store]
url = "{store_url}"
feedback_grace_ms = {grace_ms}

[[routes]]
model = "default"
upstream = "embedded"
task = "numeric"
policy = {{ type = "consistency", window = 2 }}
probe = {{ interval = 16 }}

[[routes]]
model = "texts"
upstream = "embedded"
task = "numeric"
policy = "never"
store_text = true
"#
    )
}

async fn traces(url: &str) -> Vec<Trace> {
    let store = Store::open(url).await.unwrap();
    let mut out = Vec::new();
    store
        .traces(&Selection::default(), |t| {
            out.push(t);
            true
        })
        .await
        .unwrap();
    out
}

async fn feedback(base: &str, body: &Value) -> (u16, Value) {
    let response = reqwest::Client::new().post(format!("{base}/v1/feedback")).json(body).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test]
async fn served_requests_leave_traces_that_feedback_labels() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("stopwise.db").display());
    let base = start(&config(&url, 2000), Some(engine() as Arc<dyn Engine>));

    let stopped: Value = post(&base, &chat("default", QUESTION, 200, false, Value::Null)).await.json().await.unwrap();
    let id = stopped["id"].as_str().unwrap().to_owned();
    // The trace may still be in the writer's queue: feedback waits for it.
    let (status, body) = feedback(&base, &json!({"id": id, "gold": ["72"]})).await;
    assert_eq!((status, &body["stored"]), (200, &json!(true)), "{body}");
    // Posting again is harmless, and a rating joins the gold already given.
    assert_eq!(feedback(&base, &json!({"id": id, "rating": 4})).await.0, 200);

    let plain: Value = post(&base, &chat("texts", QUESTION, 24, false, Value::Null)).await.json().await.unwrap();
    let plain_id = plain["id"].as_str().unwrap().to_owned();
    assert_eq!(feedback(&base, &json!({"id": plain_id, "correct": false})).await.0, 200);

    let stored = traces(&url).await;
    assert_eq!(stored.len(), 2, "{stored:?}");
    let trace = stored.iter().find(|t| t.id == id).unwrap();
    let served = trace.served.as_ref().unwrap();
    let extension = &stopped["stopwise"];
    assert_eq!(served.route, "default");
    assert_eq!(served.response_id, id);
    assert_eq!(served.policy_version, extension["policy_version"].as_str().unwrap());
    assert_eq!(u64::from(served.delivered_tokens), stopped["usage"]["completion_tokens"].as_u64().unwrap());
    assert_eq!(u64::from(trace.final_.tokens), extension["generated_tokens"].as_u64().unwrap());
    assert_eq!(trace.checkpoints.len() as u64, extension["probes"].as_u64().unwrap());
    assert_eq!(trace.gold, ["72"]);
    assert_eq!(served.stopped_at.is_some(), extension["stopped"] == json!(true));
    assert!(trace.question.is_none() && trace.final_.text.is_none(), "text is kept only where the route says");

    let plain_trace = stored.iter().find(|t| t.id == plain_id).unwrap();
    let served = plain_trace.served.as_ref().unwrap();
    assert_eq!((served.policy.as_str(), served.complete, served.stopped_at), ("never", false, None));
    assert_eq!(plain_trace.question.as_deref(), Some(QUESTION));
    assert_eq!(plain_trace.final_.text.as_deref(), plain["choices"][0]["message"]["content"].as_str());
    assert_eq!(u64::from(plain_trace.final_.tokens), plain["usage"]["completion_tokens"].as_u64().unwrap());

    let metrics = reqwest::get(format!("{base}/metrics")).await.unwrap().text().await.unwrap();
    for line in ["stopwise_store_traces_written_total 2", r#"stopwise_feedback_total{result="stored"} 3"#] {
        assert!(metrics.lines().any(|l| l == line), "no `{line}` in\n{metrics}");
    }
    let ready: Value = reqwest::get(format!("{base}/readyz")).await.unwrap().json().await.unwrap();
    assert_eq!(ready["store"]["status"], "ok", "{ready}");
}

#[tokio::test]
async fn bad_feedback_gets_a_clear_error_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("stopwise.db").display());
    let base = start(&config(&url, 300), Some(engine() as Arc<dyn Engine>));
    let started = std::time::Instant::now();
    let (status, body) = feedback(&base, &json!({"id": "chatcmpl-nobody", "correct": true})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("response_not_found")), "{body}");
    assert!(started.elapsed() >= std::time::Duration::from_millis(300), "the grace period was not waited");
    for (body, param) in [
        (json!({"id": "x"}), "gold"),
        (json!({"id": "x", "correct": "yes"}), "correct"),
        (json!({"id": "x", "gold": [1]}), "gold[0]"),
        (json!({"id": "x", "correct": true, "user": "me"}), "."),
        (json!({"id": "", "correct": true}), "id"),
    ] {
        let (status, answer) = feedback(&base, &body).await;
        assert_eq!(status, 400, "{body}: {answer}");
        let error = &answer["error"];
        assert!(
            error["param"] == json!(param) || error["message"].as_str().unwrap().contains("unknown field"),
            "{body}: {answer}"
        );
    }
    let huge = format!(r#"{{"id":"x","gold":["{}"]}}"#, "9".repeat(300 * 1024));
    let response = reqwest::Client::new()
        .post(format!("{base}/v1/feedback"))
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 413);
    let not_json = reqwest::Client::new().post(format!("{base}/v1/feedback")).body("{").send().await.unwrap();
    assert_eq!(not_json.status().as_u16(), 400);
    let store = Store::open(&url).await.unwrap();
    assert_eq!(store.counts().await.unwrap(), (0, 0, 0));
}

#[tokio::test]
async fn two_replicas_on_one_postgres_share_traces_and_feedback() {
    let admin = std::env::var("STOPWISE_TEST_POSTGRES_URL")
        .expect("STOPWISE_TEST_POSTGRES_URL is not set: run the tests with scripts/test, which starts Postgres");
    let name = format!("replicas_{}", std::process::id());
    let url = stopwise_db::create_postgres_database(&admin, &name).await.unwrap();
    let engine = engine() as Arc<dyn Engine>;
    let first = start(&config(&url, 3000), Some(engine.clone()));
    let second = start(&config(&url, 3000), Some(engine));
    let answer: Value = post(&first, &chat("texts", QUESTION, 16, false, Value::Null)).await.json().await.unwrap();
    let id = answer["id"].as_str().unwrap();
    // Feedback reaches the other replica, which finds the trace the first one wrote.
    let (status, body) = feedback(&second, &json!({"id": id, "gold": ["72"]})).await;
    assert_eq!(status, 200, "{body}");
    let stored = traces(&url).await;
    assert_eq!(stored.len(), 1);
    assert_eq!((stored[0].id.as_str(), stored[0].gold.as_slice()), (id, ["72".to_owned()].as_slice()));
}

#[tokio::test]
async fn replicas_on_one_postgres_share_the_active_setting() {
    let admin = std::env::var("STOPWISE_TEST_POSTGRES_URL")
        .expect("STOPWISE_TEST_POSTGRES_URL is not set: run the tests with scripts/test, which starts Postgres");
    let name = format!("shared_{}", std::process::id());
    let url = stopwise_db::create_postgres_database(&admin, &name).await.unwrap();
    let config = format!(
        r#"
[store]
url = "{url}"
sync_ms = 200

[[routes]]
model = "default"
upstream = "embedded"
task = "numeric"
policy = {{ type = "budget", max_tokens = 16 }}
audit = {{ fraction = 0.01 }}
online = {{ epsilon = 0.1, ladder = [{{ type = "budget", max_tokens = 16 }}, {{ type = "budget", max_tokens = 64 }}] }}
"#
    );
    let engine = engine() as Arc<dyn Engine>;
    let first = start(&config, Some(engine.clone()));
    let second = start(&config, Some(engine));
    let client = reqwest::Client::new();
    let active = |base: String| {
        let client = client.clone();
        async move {
            let report: Value = client.get(format!("{base}/admin/online")).send().await.unwrap().json().await.unwrap();
            report["routes"]["default"]["active"].as_u64().unwrap()
        }
    };
    assert_eq!((active(first.clone()).await, active(second.clone()).await), (0, 0));
    let set = client
        .post(format!("{first}/admin/online/default"))
        .json(&json!({"action": "set", "setting": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(set.status(), 200);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while active(second.clone()).await != 1 {
        assert!(std::time::Instant::now() < deadline, "the second replica never adopted the setting");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // And it serves it: a request there is cut by the 64-token budget, not the 16-token one.
    let answer: Value = post(&second, &chat("default", QUESTION, 200, false, Value::Null)).await.json().await.unwrap();
    assert_eq!(answer["stopwise"]["stop_reason"], "budget(64)", "{answer}");
    let metrics = reqwest::get(format!("{second}/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.contains(r#"stopwise_policy_changes_total{model="default",kind="adopted"} 1"#), "{metrics}");
}
