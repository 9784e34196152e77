//! `/v1/completions` on the embedded default model (streaming and not, stopping on and off), and
//! the Prometheus metrics that requests leave behind.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use common::*;
use serde_json::{json, Value};
use stopwise_engine::Engine;

const CONFIG: &str = r#"
[[routes]]
model = "default"
upstream = "embedded"
task = "numeric"
"#;

const PROMPT: &str = "Question: Natalia sold clips to 48 of her friends in April, and then she sold half as many \
    clips in May. How many clips did Natalia sell altogether in April and May?\nLet's think step by step.\n";

fn completion(max_tokens: u32, stream: bool, extension: Value) -> Value {
    json!({"model": "default", "prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0, "stream": stream,
           "stopwise": extension})
}

async fn post_completion(base: &str, body: &Value) -> reqwest::Response {
    reqwest::Client::new().post(format!("{base}/v1/completions")).json(body).send().await.unwrap()
}

async fn stream_completion(base: &str, body: &Value) -> Streamed {
    let response = post_completion(base, body).await;
    assert_eq!(response.status(), 200);
    Streamed::parse(&response.text().await.unwrap())
}

fn text(streamed: &Streamed) -> String {
    streamed.chunks.iter().filter_map(|c| c["choices"][0]["text"].as_str()).collect()
}

#[tokio::test]
async fn completions_stream_stop_and_match_their_non_streamed_twin() {
    let base = start(CONFIG, Some(engine() as Arc<dyn Engine>));
    let full = stream_completion(&base, &completion(120, true, json!({"disable": true}))).await;
    assert!(full.done && full.chunks.iter().all(|c| c["object"] == "text_completion"), "{:?}", full.chunks);
    let whole: Value =
        post_completion(&base, &completion(120, false, json!({"disable": true}))).await.json().await.unwrap();
    assert_eq!(whole["object"], "text_completion");
    assert_eq!(whole["choices"][0]["text"].as_str().unwrap(), text(&full));
    assert_eq!(whole["usage"], full.last()["usage"]);
    let generated = whole["usage"]["completion_tokens"].as_u64().unwrap();
    assert!(generated > 64, "the prompt needs a long continuation for the stop to mean anything: {generated}");

    let budget = json!({"policy": {"type": "budget", "max_tokens": 40}});
    let stopped = stream_completion(&base, &completion(120, true, budget)).await;
    let last = stopped.last();
    assert_eq!((&last["stopwise"]["stopped"], &last["choices"][0]["finish_reason"]), (&json!(true), &json!("stop")));
    let stopped_text = text(&stopped);
    let (prefix, answer) = stopped_text.split_once("\n\n**Final Answer**: ").expect("a forced answer");
    assert!(text(&full).starts_with(prefix), "{prefix:?} is not a prefix of {:?}", text(&full));
    assert!(!answer.is_empty());
    assert!(last["usage"]["completion_tokens"].as_u64().unwrap() < generated);

    // Without max_tokens a completion stops at 16 tokens, as OpenAI's legacy endpoint does.
    let mut default_length = completion(0, false, json!({"disable": true}));
    default_length.as_object_mut().unwrap().remove("max_tokens");
    let short: Value = post_completion(&base, &default_length).await.json().await.unwrap();
    assert_eq!(short["usage"]["completion_tokens"], 16, "{short}");

    // Several prompts: the embedded model follows one.
    let batch = json!({"model": "default", "prompt": ["a", "b"], "max_tokens": 4});
    let refused = post_completion(&base, &batch).await;
    assert_eq!(refused.status(), 400);
    let error: Value = refused.json().await.unwrap();
    assert_eq!(error["error"]["param"], "prompt", "{error}");
}

/// The value of the metric line that starts with `prefix` (name and labels as Prometheus prints them).
fn metric(page: &str, name: &str, labels: &[&str]) -> Option<f64> {
    page.lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|label| l.contains(label)))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test]
async fn requests_leave_prometheus_metrics_behind() {
    let base = start(CONFIG, Some(engine() as Arc<dyn Engine>));
    let budget = json!({"policy": {"type": "budget", "max_tokens": 40}});
    let stopped = stream(&base, &chat("default", QUESTION, 120, true, budget)).await;
    let delivered = stopped.last()["usage"]["completion_tokens"].as_u64().unwrap();
    let probes = stopped.last()["stopwise"]["probes"].as_u64().unwrap();
    let checkpoint = stopped.last()["stopwise"]["checkpoint_tokens"].as_f64().unwrap();
    let unknown = post(&base, &chat("gpt-9", "hi", 4, false, Value::Null)).await;
    assert_eq!(unknown.status(), 404);

    let response = reqwest::get(format!("{base}/metrics")).await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    let page = response.text().await.unwrap();
    eprintln!("{page}");
    let model = "model=\"default\"";
    assert_eq!(metric(&page, "stopwise_requests_total", &[model, "outcome=\"stopped\""]), Some(1.0));
    assert_eq!(metric(&page, "stopwise_completion_tokens_total", &[model]), Some(delivered as f64));
    assert_eq!(metric(&page, "stopwise_probes_total", &[model, "result=\"answered\""]), Some(probes as f64));
    assert_eq!(metric(&page, "stopwise_http_requests_total", &["status=\"404\""]), Some(1.0));
    assert_eq!(metric(&page, "stopwise_http_requests_total", &["status=\"200\""]), Some(1.0));
    assert_eq!(metric(&page, "stopwise_time_to_first_token_seconds_count", &[model]), Some(1.0));
    assert_eq!(metric(&page, "stopwise_stop_checkpoint_tokens_sum", &[model]), Some(checkpoint));
    assert_eq!(metric(&page, "stopwise_requests_in_flight", &[model]), Some(0.0));
    // The embedded engine's load, read at each scrape: the stopped request's sequence is freed
    // (and counted as cancelled) once the engine reaches its next token.
    let mut engine_load = (None, None);
    for _ in 0..100 {
        let page = reqwest::get(format!("{base}/metrics")).await.unwrap().text().await.unwrap();
        engine_load = (
            metric(&page, "stopwise_engine_active_sequences", &[]),
            metric(&page, "stopwise_engine_cancelled_requests_total", &[]),
        );
        if engine_load == (Some(0.0), Some(1.0)) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(engine_load, (Some(0.0), Some(1.0)));
    // Every series is stopwise's own.
    assert!(page.lines().filter(|l| !l.starts_with('#') && !l.is_empty()).all(|l| l.starts_with("stopwise_")));
}
