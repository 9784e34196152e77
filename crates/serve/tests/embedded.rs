//! `stopwise serve` on the embedded default model, through a real HTTP client: streaming and not,
//! stopping on and off, per-request policies, errors, a misbehaving upstream and client
//! disconnects. Every test starts its own server (nextest runs each test in its own process).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use stopwise_engine::Engine;

/// Routes: `default` (embedded, Dynasor-CoT, numeric answers) and `broken` (an upstream given
/// by the test).
fn config(broken_upstream: &str) -> String {
    format!(
        r#"
[[routes]]
model = "default"
upstream = "embedded"
task = "numeric"
[[routes]]
model = "broken"
upstream = "{broken_upstream}"
policy = "never"
"#
    )
}

fn start_embedded() -> (String, Arc<stopwise_engine::LlamaEngine>) {
    let engine = engine();
    let base = start(&config("http://127.0.0.1:9/v1"), Some(engine.clone() as Arc<dyn Engine>));
    (base, engine)
}

const BUDGET: &str = r#"{"type":"budget","max_tokens":40}"#;

#[tokio::test]
async fn stopping_off_streams_exactly_what_non_streaming_returns() {
    let (base, _) = start_embedded();
    let streamed = stream(&base, &chat("default", QUESTION, 120, true, json!({"disable": true}))).await;
    let whole: Value =
        post(&base, &chat("default", QUESTION, 120, false, json!({"disable": true}))).await.json().await.unwrap();
    eprintln!("full answer: {:?}", streamed.content());
    assert!(streamed.done && streamed.error.is_none());
    assert_eq!(whole["object"], "chat.completion");
    assert_eq!(whole["choices"][0]["message"]["content"].as_str().unwrap(), streamed.content());
    assert_eq!(whole["usage"], streamed.last()["usage"]);
    // Stopping disabled: no probes were taken, so there is no extension to report.
    assert!(streamed.last().get("stopwise").is_none() && whole.get("stopwise").is_none());
    let tokens = whole["usage"]["completion_tokens"].as_u64().unwrap();
    assert!(tokens > 64, "the question needs a long answer for the stop tests to mean anything: {tokens}");
}

#[tokio::test]
async fn a_budget_policy_stops_early_and_the_prefix_is_unchanged() {
    let (base, engine) = start_embedded();
    let full = stream(&base, &chat("default", QUESTION, 160, true, json!({"disable": true}))).await;
    let stopped = stream(&base, &chat("default", QUESTION, 160, true, json!({"policy": BUDGET}))).await;
    let last = stopped.last();
    eprintln!("stopped stream ends: {:?}", &stopped.chunks[stopped.chunks.len() - 2..]);
    assert!(stopped.done);
    assert_eq!(last["choices"][0]["finish_reason"], "stop");
    let ext = &last["stopwise"];
    assert_eq!(ext["stopped"], true);
    // Checkpoints every 32 tokens: at 32 < 40 the budget needs no answer, at 64 it does, so the
    // engine is asked for exactly one probe. It takes it at its first token boundary after the
    // request, after token 64 unless it has run ahead of the session.
    assert_eq!(ext["probes"], 1, "{ext}");
    let checkpoint = ext["checkpoint_tokens"].as_u64().unwrap();
    assert!((64..96).contains(&checkpoint), "{ext}");
    assert_eq!(ext["policy"], serde_json::from_str::<Value>(BUDGET).unwrap());
    assert_eq!(ext["stop_reason"], "budget(40)");
    assert!(ext["probe_completion_tokens"].as_u64().unwrap() > 0);
    // The client got the upstream's own tokens up to the stop point, then the forced answer.
    let text = stopped.content();
    let (generated, forced) = text.split_once("\n\n**Final Answer**: ").expect("forced answer");
    assert!(full.content().starts_with(generated), "{generated:?} is not a prefix of {:?}", full.content());
    assert!(!forced.is_empty());
    let used = last["usage"]["completion_tokens"].as_u64().unwrap();
    let full_tokens = full.last()["usage"]["completion_tokens"].as_u64().unwrap();
    assert!(used < full_tokens, "stopped request used {used} tokens, the full one {full_tokens}");
    // Stopping cancelled the engine's request (it was still generating at token 64).
    cancelled(&engine).await;
}

/// Waits until the engine has seen a request cancelled (it notices at its next token).
async fn cancelled(engine: &stopwise_engine::LlamaEngine) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while engine.stats().cancelled == 0 {
        assert!(tokio::time::Instant::now() < deadline, "the engine never saw the cancel: {:?}", engine.stats());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn non_streaming_requests_stop_too() {
    let (base, _) = start_embedded();
    let response: Value =
        post(&base, &chat("default", QUESTION, 160, false, json!({"policy": BUDGET}))).await.json().await.unwrap();
    assert_eq!(response["stopwise"]["stopped"], true);
    assert_eq!(response["choices"][0]["finish_reason"], "stop");
    assert!(response["choices"][0]["message"]["content"].as_str().unwrap().contains("**Final Answer**: "));
}

#[tokio::test]
async fn the_route_policy_applies_when_the_request_names_none() {
    let (base, _) = start_embedded();
    // Dynasor-CoT (the default) probes along the way and reports them, stopped or not.
    let streamed = stream(&base, &chat("default", QUESTION, 200, true, Value::Null)).await;
    let ext = &streamed.last()["stopwise"];
    assert_eq!(ext["policy"]["type"], "consistency");
    assert!(ext["probes"].as_u64().unwrap() >= 1, "{ext}");
}

/// Posts a raw body and returns the status and the parsed error object.
async fn error_of(base: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{base}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    let error = body["error"].clone();
    assert!(error["message"].is_string() && error["type"].is_string(), "{body}");
    (status, error)
}

async fn still_serves(base: &str) {
    let response = post(base, &chat("default", "Say hi.", 4, false, Value::Null)).await;
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn bad_requests_get_openai_errors_and_the_server_keeps_serving() {
    let (base, _) = start_embedded();
    let (status, error) = error_of(&base, "{\"model\": ").await;
    assert_eq!(status, 400, "{error}");
    still_serves(&base).await;
    let (status, error) = error_of(&base, r#"{"model":"default"}"#).await;
    assert_eq!((status, error["param"].as_str()), (400, Some("messages")), "{error}");
    assert!(error["message"].as_str().unwrap().contains("messages"));
    let (status, error) = error_of(&base, r#"{"model":"default","messages":[{"role":"user"}],"temperature":-1}"#).await;
    assert_eq!((status, error["param"].as_str()), (400, Some("temperature")), "{error}");
    still_serves(&base).await;
    let (status, error) = error_of(&base, r#"{"model":"gpt-9","messages":[{"role":"user","content":"x"}]}"#).await;
    assert_eq!(
        (status, error["code"].as_str(), error["param"].as_str()),
        (404, Some("model_not_found"), Some("model"))
    );
    still_serves(&base).await;
    // Default limit: 8 MiB.
    let big = format!(r#"{{"model":"default","messages":[{{"role":"user","content":"{}"}}]}}"#, "a".repeat(9 << 20));
    let (status, error) = error_of(&base, big).await;
    assert_eq!(status, 413, "{error}");
    still_serves(&base).await;
    let (status, error) = error_of(
        &base,
        r#"{"model":"default","messages":[{"role":"user","content":"x"}],"stopwise":{"policy":"nope"}}"#,
    )
    .await;
    assert_eq!((status, error["param"].as_str()), (400, Some("stopwise.policy")), "{error}");
    let (status, error) =
        error_of(&base, r#"{"model":"default","messages":[{"role":"user","content":"x"}],"n":2}"#).await;
    assert_eq!((status, error["param"].as_str()), (400, Some("n")), "{error}");
}

// Multi-threaded: the upstream runs on this runtime while `start` waits for the self-test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_breaks_off_gives_an_error_event_and_the_server_keeps_serving() {
    let upstream = raw_sse_upstream(&["Hello", " world"], Duration::from_millis(50)).await;
    let engine = engine();
    let base = start(&config(&upstream), Some(engine as Arc<dyn Engine>));
    let streamed = stream(&base, &chat("broken", "hi", 10, true, Value::Null)).await;
    assert_eq!(streamed.content(), "Hello world", "what the upstream did send is relayed as is");
    assert_eq!(streamed.chunks[0]["id"], "up-1");
    let error = streamed.error.expect("an error event");
    assert_eq!(error["error"]["type"], "upstream_error");
    assert!(!streamed.done);
    still_serves(&base).await;
}

#[tokio::test]
async fn an_unreachable_upstream_is_a_502_with_an_error_object() {
    let (base, _) = start_embedded();
    let (status, error) = error_of(&base, chat("broken", "hi", 10, true, Value::Null).to_string()).await;
    assert_eq!((status, error["type"].as_str()), (502, Some("upstream_error")), "{error}");
    still_serves(&base).await;
}

#[tokio::test]
async fn a_client_that_goes_away_cancels_the_generation() {
    let (base, engine) = start_embedded();
    let mut response = post(&base, &chat("default", QUESTION, 1000, true, json!({"disable": true}))).await;
    // Read a little of the stream, then hang up.
    let first = response.chunk().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: "));
    drop(response);
    cancelled(&engine).await;
    still_serves(&base).await;
}

#[tokio::test]
async fn models_health_and_readiness() {
    let (base, _) = start_embedded();
    let models: Value = reqwest::get(format!("{base}/v1/models")).await.unwrap().json().await.unwrap();
    let ids: Vec<&str> = models["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    // The embedded default route also answers to the model file's name.
    assert_eq!(ids, ["SmolLM2-135M-Instruct.Q4_1", "broken", "default"]);
    let by_file = post(&base, &chat("SmolLM2-135M-Instruct.Q4_1", "Say hi.", 4, false, Value::Null)).await;
    assert_eq!(by_file.status(), 200);
    assert_eq!(reqwest::get(format!("{base}/healthz")).await.unwrap().status(), 200);
    // `broken` points at a closed port, so the server is alive but not ready.
    let ready = reqwest::get(format!("{base}/readyz")).await.unwrap();
    assert_eq!(ready.status(), 503);
    let body: Value = ready.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("broken"), "{body}");
}

#[tokio::test]
async fn a_full_queue_is_a_429_with_retry_after() {
    // One sequence and one waiting place: with a request generating and one waiting, a third
    // cannot be queued.
    let engine = engine_with(1, 1);
    let base = start(&config("http://127.0.0.1:9/v1"), Some(engine as Arc<dyn Engine>));
    let long = chat("default", QUESTION, 400, true, json!({"disable": true}));
    let mut running = post(&base, &long).await;
    // Its first token is out, so it holds the only sequence.
    running.chunk().await.unwrap().unwrap();
    let client = reqwest::Client::new();
    let waiting = tokio::spawn(client.post(format!("{base}/v1/chat/completions")).json(&long).send());
    // Give the second request time to reach the engine's queue.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rejected = post(&base, &long).await;
    assert_eq!(rejected.status(), 429);
    assert_eq!(rejected.headers()["retry-after"], "1");
    let body: Value = rejected.json().await.unwrap();
    assert_eq!(body["error"]["type"], "rate_limit_error", "{body}");
    waiting.abort();
    drop(running);
    // End only once the engine is idle again (a process that exits while llama.cpp decodes can
    // crash in its teardown): a one-token request is served once both others are cancelled.
    let short = chat("default", QUESTION, 1, false, json!({"disable": true}));
    for _ in 0..100 {
        if post(&base, &short).await.status() == 200 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the engine never became free after its requests were cancelled");
}

#[tokio::test]
async fn the_clients_max_tokens_and_stop_bound_the_forced_answer() {
    let (base, _) = start_embedded();
    // A stop string inside the answer template: the forced answer ends just before it.
    let mut body = chat("default", QUESTION, 160, true, json!({"policy": BUDGET}));
    body["stop"] = json!(["Answer"]);
    let cut = stream(&base, &body).await;
    assert_eq!(cut.last()["stopwise"]["stopped"], true, "{:?}", cut.last());
    assert!(cut.content().ends_with("\n\n**Final "), "{:?}", cut.content());
    // No room for an answer within max_tokens: no stop, the upstream runs to the limit.
    let tight = stream(&base, &chat("default", QUESTION, 65, true, json!({"policy": BUDGET}))).await;
    let last = tight.last();
    assert_eq!(last["stopwise"]["stopped"], false, "{last}");
    assert_eq!(last["choices"][0]["finish_reason"], "length");
    assert_eq!(last["usage"]["completion_tokens"], 65);
    // Only the checkpoint at 64 needs an answer. The engine probes after token 64 only when a
    // 65th may follow, so it takes that probe unless it had run past token 64 when asked; when
    // it does, the rule says stop (the answer has more than one token) and only the limit keeps
    // the answer out.
    assert!(last["stopwise"]["probes"].as_u64().unwrap() <= 1, "{last}");
}
