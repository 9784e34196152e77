//! The proxy against streams no local server produces: vLLM's and SGLang's reasoning models
//! (`reasoning_content`, later `reasoning`), usage chunks and `continue_final_message` probes.
//! The upstream is a real HTTP server replaying fixtures written from those projects' API
//! documentation (tests/fixtures/README.md says where each shape comes from). The upstream runs on
//! the test's runtime, which must keep running while `start` waits for the proxy's self-test:
//! hence multi-threaded runtimes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::post as post_route;
use axum::{Json, Router};
use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};

const FIXTURES: [&str; 3] =
    ["vllm-0.10-reasoning_content.jsonl", "vllm-0.11-reasoning.jsonl", "sglang-reasoning_content.jsonl"];

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// What the upstream was asked: streamed generations and probes.
#[derive(Default)]
struct Seen {
    streams: Vec<Value>,
    probes: Vec<Value>,
    authorization: Vec<String>,
}

struct Upstream {
    chunks: Vec<String>,
    /// vLLM reports running usage when asked (`stream_options.continuous_usage_stats`); its
    /// chunks may carry several tokens, here two each.
    running_usage: bool,
    seen: Mutex<Seen>,
}

/// Tokens per text chunk in the fake upstream's running usage.
const TOKENS_PER_CHUNK: u64 = 2;

/// Streams the fixture (a chunk every 10 ms, as a model would) and answers probes with the
/// documented probe response (or, for the start-up check that a prefill is continued, goes on
/// counting as a model that honours `continue_final_message` would).
async fn chat(
    State(upstream): State<Arc<Upstream>>,
    headers: axum::http::HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let authorization = headers.get("authorization").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    upstream.seen.lock().unwrap().authorization.push(authorization);
    if body["continue_final_message"] == true {
        let mut answer: Value = serde_json::from_str(&fixture("vllm-probe-response.json")).unwrap();
        let prefill = body["messages"].as_array().unwrap().last().unwrap()["content"].as_str().unwrap().to_owned();
        if prefill.contains("6, 7,") {
            answer["choices"][0]["message"]["content"] = json!(" 8, 9,");
        }
        upstream.seen.lock().unwrap().probes.push(body);
        return Json(answer).into_response();
    }
    let options = &body["stream_options"];
    let (include_usage, running) = (options["include_usage"] == true, options["continuous_usage_stats"] == true);
    let mut completion_tokens = 0;
    let chunks: Vec<String> = upstream
        .chunks
        .iter()
        .filter_map(|c| {
            let mut chunk: Value = serde_json::from_str(c).unwrap();
            let usage_only = chunk["choices"].as_array().unwrap().is_empty();
            if usage_only && !include_usage {
                return None;
            }
            if running && upstream.running_usage && !usage_only {
                let (content, reasoning) = (&chunk["choices"][0]["delta"]["content"], reasoning_of(&chunk));
                if content.as_str().is_some_and(|t| !t.is_empty()) || !reasoning.is_empty() {
                    completion_tokens += TOKENS_PER_CHUNK;
                }
                chunk["usage"] = json!({"prompt_tokens": 38, "completion_tokens": completion_tokens,
                                        "total_tokens": 38 + completion_tokens});
                return Some(chunk.to_string());
            }
            Some(c.clone())
        })
        .collect();
    upstream.seen.lock().unwrap().streams.push(body);
    let frames: Vec<String> =
        chunks.iter().map(|c| format!("data: {c}\n\n")).chain(["data: [DONE]\n\n".to_owned()]).collect();
    let body = futures_util::stream::iter(frames).then(|frame| async move {
        tokio::time::sleep(Duration::from_millis(10)).await;
        Ok::<_, std::convert::Infallible>(Bytes::from(frame))
    });
    ([("content-type", "text/event-stream")], Body::from_stream(body)).into_response()
}

async fn start_upstream(name: &str) -> (String, Arc<Upstream>) {
    let chunks = fixture(name).lines().map(str::to_owned).collect();
    let upstream = Arc::new(Upstream { chunks, running_usage: name.starts_with("vllm"), seen: Mutex::default() });
    let app = Router::new().route("/v1/chat/completions", post_route(chat)).with_state(upstream.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{address}/v1"), upstream)
}

/// `stopwise serve` with one route, `r1`, on that upstream: probes every 4 tokens, numeric
/// answers. What the start-up self-test asked the upstream is forgotten.
fn start_proxy(upstream: &Upstream, url: &str) -> String {
    let base = start(&route(url, r#"{ type = "budget", max_tokens = 8 }"#, "refuse"), None);
    *upstream.seen.lock().unwrap() = Seen::default();
    base
}

fn route(upstream: &str, policy: &str, on_missing: &str) -> String {
    format!(
        r#"
[[routes]]
model = "r1"
upstream = "{upstream}"
task = "numeric"
policy = {policy}
probe = {{ interval = 4 }}
on_missing_capability = "{on_missing}"
"#
    )
}

fn request(stream: bool, extension: Value) -> Value {
    let mut body = json!({
        "model": "r1", "messages": [{"role": "user", "content": "How many clips?"}],
        "stream": stream, "stream_options": {"include_usage": true}, "temperature": 0,
    });
    if !stream {
        body.as_object_mut().unwrap().remove("stream_options");
    }
    if !extension.is_null() {
        body["stopwise"] = extension;
    }
    body
}

fn reasoning_of(chunk: &Value) -> &str {
    let delta = &chunk["choices"][0]["delta"];
    delta["reasoning_content"].as_str().or_else(|| delta["reasoning"].as_str()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reasoning_stream_stops_inside_its_reasoning_and_answers_as_content() {
    for name in FIXTURES {
        let (upstream_url, upstream) = start_upstream(name).await;
        let base = start_proxy(&upstream, &upstream_url);
        let streamed = stream(&base, &request(true, Value::Null)).await;
        assert!(streamed.done && streamed.error.is_none(), "{name}");
        // Up to the stop, the client got the upstream's own chunks, byte for byte as JSON.
        let forced_at = streamed
            .chunks
            .iter()
            .position(|c| {
                c["choices"][0]["delta"]["content"] != json!(null)
                    && c["choices"][0]["delta"]["content"] != ""
                    && reasoning_of(c).is_empty()
            })
            .unwrap();
        for (got, sent) in streamed.chunks[..forced_at].iter().zip(&upstream.chunks) {
            assert_eq!(got, &serde_json::from_str::<Value>(sent).unwrap(), "{name}");
        }
        // The stop came inside the reasoning (the fixture reasons for 51 tokens), and the answer
        // is the message's content: the reasoning block closed, no blank line before it.
        let reasoning: String = streamed.chunks.iter().map(reasoning_of).collect();
        assert!(
            reasoning.starts_with("Natalia sold 48") && !reasoning.contains("Yes , the total"),
            "{name}: {reasoning}"
        );
        assert_eq!(streamed.chunks[forced_at]["choices"][0]["delta"]["content"], "**Final Answer**: 72", "{name}");
        let last = streamed.last();
        assert_eq!(last["choices"][0]["finish_reason"], "stop");
        assert_eq!((&last["stopwise"]["stopped"], &last["stopwise"]["probes"]), (&json!(true), &json!(1)), "{last}");
        assert_eq!(last["stopwise"]["probe_prompt_tokens"], 71, "the probe's own usage is reported");
        // The stream went on while the probe ran; the report says where it was cut.
        let (checkpoint, cut) = (&last["stopwise"]["checkpoint_tokens"], &last["stopwise"]["generated_tokens"]);
        assert!(checkpoint.as_u64().unwrap() >= 8 && cut.as_u64().unwrap() >= checkpoint.as_u64().unwrap(), "{last}");
        // vLLM counts exactly (running usage, two tokens a chunk in this fake); SGLang's chunks
        // count one token each.
        let per_chunk = if upstream.running_usage { TOKENS_PER_CHUNK } else { 1 };
        assert_eq!(cut.as_u64().unwrap(), per_chunk * (forced_at as u64 - 1), "{name}: {last}");
        let prompt_tokens = if upstream.running_usage { 38 } else { 0 };
        assert_eq!(last["usage"]["prompt_tokens"], prompt_tokens, "{name}: {last}");
        // What stopwise asked for on its own (running usage) never reaches the client.
        assert!(streamed.chunks.iter().all(|c| c["usage"].is_null() || c == last), "{name}");
        // The probe continued the reasoning inside its block, closed it, and asked for the answer.
        let seen = upstream.seen.lock().unwrap();
        let probe = &seen.probes[0];
        assert_eq!((&probe["continue_final_message"], &probe["add_generation_prompt"]), (&json!(true), &json!(false)));
        let prefill = probe["messages"].as_array().unwrap().last().unwrap();
        assert_eq!(prefill["role"], "assistant");
        let prefill = prefill["content"].as_str().unwrap();
        assert!(prefill.starts_with("<think>\nNatalia sold 48"), "{prefill:?}");
        assert!(prefill.ends_with("\n</think>\n\n\n\nFinal answer: "), "{prefill:?}");
        // Stopping streams from the upstream whatever the client asked; the extension is stripped.
        assert_eq!(seen.streams[0]["stream"], true);
        assert!(seen.streams[0].get("stopwise").is_none());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_streaming_clients_get_the_reasoning_and_the_answer_apart() {
    let (upstream_url, upstream) = start_upstream(FIXTURES[0]).await;
    let base = start_proxy(&upstream, &upstream_url);
    let response: Value = post(&base, &request(false, Value::Null)).await.json().await.unwrap();
    let message = &response["choices"][0]["message"];
    assert_eq!(message["content"], "**Final Answer**: 72", "{response}");
    assert!(message["reasoning_content"].as_str().unwrap().starts_with("Natalia sold 48"), "{response}");
    assert_eq!(response["object"], "chat.completion");
    assert_eq!(response["stopwise"]["stopped"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_stopping_off_every_chunk_and_the_usage_chunk_pass_unchanged() {
    for name in FIXTURES {
        let (upstream_url, upstream) = start_upstream(name).await;
        let base = start_proxy(&upstream, &upstream_url);
        let streamed = stream(&base, &request(true, json!({"disable": true}))).await;
        let sent: Vec<Value> = upstream.chunks.iter().map(|c| serde_json::from_str(c).unwrap()).collect();
        assert_eq!(streamed.chunks, sent, "{name}");
        assert!(streamed.done);
        assert!(upstream.seen.lock().unwrap().probes.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_never_stops_reports_its_probes_after_the_usage_chunk() {
    let (upstream_url, upstream) = start_upstream(FIXTURES[2]).await;
    let base = start_proxy(&upstream, &upstream_url);
    let policy = json!({"policy": {"type": "consistency", "window": 100}});
    let streamed = stream(&base, &request(true, policy)).await;
    let n = streamed.chunks.len();
    assert_eq!(n, upstream.chunks.len() + 1, "every upstream chunk, then stopwise's report");
    assert!(streamed.chunks[n - 2]["usage"]["completion_tokens"].is_u64(), "the upstream's usage chunk");
    let report = &streamed.chunks[n - 1];
    assert_eq!(report["choices"], json!([]));
    assert_eq!(report["stopwise"]["stopped"], false);
    let probes = report["stopwise"]["probes"].as_u64().unwrap();
    assert!(probes >= 1 && probes == upstream.seen.lock().unwrap().probes.len() as u64, "{report}");
    assert_eq!(report["stopwise"]["policy_version"].as_str().unwrap().len(), 16);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_that_needs_missing_log_probs_refuses_to_start_or_degrades() {
    // The documented streams carry no log-probs, which a log-prob window reads.
    let (upstream_url, _) = start_upstream(FIXTURES[1]).await;
    let window = r#"{ type = "logprob_window", window = 16, threshold = -0.5 }"#;
    let settings = stopwise_serve::Config::parse(&route(&upstream_url, window, "refuse"))
        .unwrap()
        .resolve(&stopwise_serve::Overrides::default(), |_| None)
        .unwrap();
    let mut state = stopwise_serve::AppState::new(&settings, None).unwrap();
    let refused = state.self_test().await.unwrap_err();
    assert!(refused.contains("logprobs") && refused.contains("r1") && refused.contains("degrade"), "{refused}");

    let (upstream_url, upstream) = start_upstream(FIXTURES[1]).await;
    let base = start(&route(&upstream_url, window, "degrade"), None);
    let report: Value = reqwest::get(format!("{base}/admin/capabilities")).await.unwrap().json().await.unwrap();
    let r1 = &report["routes"]["r1"];
    assert_eq!(r1["capabilities"]["logprobs"]["ok"], false, "{report}");
    assert_eq!(
        (&r1["capabilities"]["streams"]["ok"], &r1["capabilities"]["prefill"]["ok"]),
        (&json!(true), &json!(true))
    );
    assert!(r1["stopping"].as_str().unwrap().starts_with("off (degraded)"), "{r1}");
    // vLLM reports running usage when asked: token counts are exact on this route.
    assert_eq!(r1["capabilities"]["usage_in_stream"]["ok"], true, "{r1}");
    // Degraded: the route is a plain proxy, and a request asking for the same policy is told why not.
    *upstream.seen.lock().unwrap() = Seen::default();
    let streamed = stream(&base, &request(true, Value::Null)).await;
    assert!(streamed.last().get("stopwise").is_none() && upstream.seen.lock().unwrap().probes.is_empty());
    let asked = json!({"policy": {"type": "logprob_window", "window": 16, "threshold": -0.5}});
    let refused = post(&base, &request(true, asked)).await;
    assert_eq!(refused.status(), 400);
    let error: Value = refused.json().await.unwrap();
    assert_eq!(error["error"]["param"], "stopwise.policy");
    assert!(error["error"]["message"].as_str().unwrap().contains("logprobs"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_need_the_token_when_one_is_set() {
    let (upstream_url, _) = start_upstream(FIXTURES[0]).await;
    let toml = format!("admin_token = \"s3cret\"\n{}", route(&upstream_url, "\"never\"", "refuse"));
    let base = start(&toml, None);
    let client = reqwest::Client::new();
    let url = format!("{base}/admin/capabilities");
    assert_eq!(client.get(&url).send().await.unwrap().status(), 401);
    assert_eq!(client.get(&url).bearer_auth("wrong").send().await.unwrap().status(), 401);
    let ok = client.get(&url).bearer_auth("s3cret").send().await.unwrap();
    assert_eq!(ok.status(), 200);
    let report: Value = ok.json().await.unwrap();
    assert_eq!(report["routes"]["r1"]["stopping"], "off");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_path_in_the_openapi_document_is_served() {
    let (upstream_url, _) = start_upstream(FIXTURES[0]).await;
    let base = start(&route(&upstream_url, "\"never\"", "refuse"), None);
    let doc: Value = reqwest::get(format!("{base}/openapi.json")).await.unwrap().json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let client = reqwest::Client::new();
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 8, "{paths:?}");
    for (path, operations) in paths {
        for method in operations.as_object().unwrap().keys() {
            let url = format!("{base}{path}");
            let response = match method.as_str() {
                "get" => client.get(&url).send().await.unwrap(),
                "post" => client.post(&url).json(&json!({})).send().await.unwrap(),
                other => panic!("{other} {path}: a method the test does not know"),
            };
            let status = response.status().as_u16();
            let body = response.text().await.unwrap();
            // An empty body gets a 400 naming the field; anything else answers.
            assert!(matches!(status, 200 | 400 | 503), "{method} {path}: {status} {body}");
            assert!(!body.contains("no such endpoint"), "{method} {path}");
            assert!(
                operations[method]["responses"][status.to_string()].is_object(),
                "{method} {path}: {status} undocumented"
            );
        }
    }
    let missing = reqwest::get(format!("{base}/v1/embeddings")).await.unwrap();
    assert_eq!(missing.status(), 404, "paths outside the document are not served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_routes_api_key_reaches_the_upstream_on_every_request() {
    let (upstream_url, upstream) = start_upstream(FIXTURES[0]).await;
    let toml = format!(
        "{}api_key_env = \"UPSTREAM_KEY\"\n",
        route(&upstream_url, r#"{ type = "budget", max_tokens = 8 }"#, "refuse")
    );
    let env = |var: &str| (var == "UPSTREAM_KEY").then(|| "sk-test".to_owned());
    let settings =
        stopwise_serve::Config::parse(&toml).unwrap().resolve(&stopwise_serve::Overrides::default(), env).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { stopwise_serve::serve(&settings, None, listener).await.unwrap() });
    let streamed = stream(&base, &request(true, Value::Null)).await;
    assert_eq!(streamed.last()["stopwise"]["stopped"], true);
    let seen = upstream.seen.lock().unwrap();
    // The self-test's requests, the stream and its probe all carried the key.
    assert!(
        seen.authorization.len() >= 4 && seen.authorization.iter().all(|a| a == "Bearer sk-test"),
        "{:?}",
        seen.authorization
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_streams_each_stop_with_their_own_answer() {
    let (upstream_url, upstream) = start_upstream(FIXTURES[2]).await;
    let base = start_proxy(&upstream, &upstream_url);
    let client = reqwest::Client::new();
    let streams = (0..200).map(|_| {
        let (client, base) = (client.clone(), base.clone());
        tokio::spawn(async move {
            let response = client
                .post(format!("{base}/v1/chat/completions"))
                .json(&request(true, Value::Null))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            Streamed::parse(&response.text().await.unwrap())
        })
    });
    let streams = futures_util::future::join_all(streams).await;
    for streamed in streams {
        let streamed = streamed.unwrap();
        assert!(streamed.done && streamed.error.is_none());
        assert_eq!(streamed.last()["stopwise"]["stopped"], true, "{}", streamed.last());
        let content =
            streamed.chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect::<String>();
        assert_eq!(content, "**Final Answer**: 72");
    }
    // One stream and (at least) one probe per request reached the upstream.
    let seen = upstream.seen.lock().unwrap();
    assert_eq!(seen.streams.len(), 200);
    assert!(seen.probes.len() >= 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_upstream_is_given_up_after_the_routes_idle_timeout() {
    // One chunk, then a connection held open in silence: a stalled server.
    let upstream = raw_sse_upstream(&["Hello"], Duration::from_secs(30)).await;
    let toml = format!("{}idle_timeout_ms = 300\n", route(&upstream, "\"never\"", "refuse"));
    let base = start(&toml, None);
    let streamed = stream(&base, &request(true, Value::Null)).await;
    let content: String = streamed.chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(content, "Hello", "what came before the silence is relayed");
    let error = streamed.error.expect("an error event once the upstream has been silent too long");
    assert_eq!(error["error"]["type"], "upstream_error");
    assert!(error["error"]["message"].as_str().unwrap().contains("idle_timeout_ms"), "{error}");
    assert!(!streamed.done);
}
