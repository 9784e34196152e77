//! The proxy path against a real third-party OpenAI-compatible server: llama-cpp-python's server
//! (PyPI `llama-cpp-python[server]==0.3.36`, installed by `.ci/run`) on the default GGUF, at
//! temperature 0. With stopping off the client receives exactly the chunks the server sends
//! when called directly; with stopping on, exactly those chunks up to the stop point.
//!
//! llama-cpp-python runs one request at a time, so probes go to a second instance on the same
//! model, through `/v1/completions` with a ChatML prompt (its chat endpoint cannot continue an
//! assistant message).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// The model's own default system message (from its GGUF chat template), which llama-cpp-python
/// adds to chats that have none; the ChatML probe prompt must add it too.
const SMOLLM_SYSTEM: &str = "You are a helpful AI assistant named SmolLM, trained by Hugging Face";

/// A llama-cpp-python server, killed when dropped.
struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn llama_cpp_server() -> Server {
    let port = free_port();
    let model = model_path();
    let child = Command::new("python3")
        .args(["-m", "llama_cpp.server", "--model"])
        .arg(&model)
        .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--n_ctx", "2048"])
        // A new request must queue behind the running one, not interrupt it.
        .args(["--interrupt_requests", "False", "--verbose", "False"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let server = Server { child, base: format!("http://127.0.0.1:{port}/v1") };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let ready = reqwest::get(format!("{}/models", server.base)).await;
        if ready.is_ok_and(|r| r.status().is_success()) {
            return server;
        }
        assert!(Instant::now() < deadline, "llama-cpp-python did not start on port {port}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The chunks of a stream, without the fields that differ between two requests.
fn comparable(chunks: &[Value]) -> Vec<Value> {
    chunks
        .iter()
        .map(|c| {
            let mut c = c.clone();
            let object = c.as_object_mut().unwrap();
            object.remove("id");
            object.remove("created");
            c
        })
        .collect()
}

#[tokio::test]
async fn the_client_gets_exactly_the_upstream_stream_up_to_the_stop_point() {
    if !python_has("llama_cpp") {
        return;
    }
    let (generator, prober) = tokio::join!(llama_cpp_server(), llama_cpp_server());
    let config = format!(
        r#"
[[routes]]
model = "smol"
upstream = "{}"
task = "numeric"
policy = "never"
probe = {{ mode = "chatml_completions", upstream = "{}", default_system = "{SMOLLM_SYSTEM}", timeout_ms = 60000 }}
[[routes]]
model = "smol-probe-down"
upstream = "{}"
upstream_model = "smol"
task = "numeric"
policy = {{ type = "budget", max_tokens = 32 }}
probe = {{ mode = "chatml_completions", upstream = "http://127.0.0.1:9/v1" }}
"#,
        generator.base, prober.base, generator.base
    );
    let proxy = start(&config, None);
    let request = chat("smol", QUESTION, 400, true, Value::Null);

    let direct = Streamed::parse(
        &reqwest::Client::new()
            .post(format!("{}/chat/completions", generator.base))
            .json(&request)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    );
    assert!(direct.done && direct.chunks.len() > 100, "{} chunks", direct.chunks.len());
    eprintln!("direct: {:?}", direct.content());

    // Stopping off: the same chunks, field for field.
    let off = stream(&proxy, &request).await;
    assert!(off.done && off.error.is_none());
    assert_eq!(comparable(&off.chunks), comparable(&direct.chunks));

    // Stopping on (a budget below the first probe, so the first probe to return stops): the
    // same chunks up to the stop point, then the forced answer and the final chunk.
    let mut stopping = request.clone();
    stopping["stopwise"] = json!({"policy": {"type": "budget", "max_tokens": 32}});
    let on = stream(&proxy, &stopping).await;
    let last = on.last();
    eprintln!("stopped: {last}");
    assert!(on.done);
    assert_eq!(last["stopwise"]["stopped"], true);
    assert_eq!(last["stopwise"]["checkpoint_tokens"], 32);
    assert!(last["stopwise"]["probe_prompt_tokens"].as_u64().unwrap() > 0);
    let relayed = on.chunks.len() - 2;
    assert!(relayed < direct.chunks.len(), "the stop came after the upstream had finished");
    assert_eq!(comparable(&on.chunks[..relayed]), comparable(&direct.chunks[..relayed]));
    let forced = on.chunks[relayed]["choices"][0]["delta"]["content"].as_str().unwrap();
    assert!(forced.starts_with("\n\n**Final Answer**: ") && forced.len() > 20, "{forced:?}");
    assert_eq!(last["choices"][0]["finish_reason"], "stop");

    // A budget needs the probed answer only at its limit: the checkpoints before it cost nothing.
    let mut late = request.clone();
    late["stopwise"] = json!({"policy": {"type": "budget", "max_tokens": 96}});
    let late = stream(&proxy, &late).await;
    let last = late.last();
    assert_eq!(last["stopwise"]["stopped"], true, "{last}");
    assert_eq!(last["stopwise"]["checkpoint_tokens"], 96);
    assert_eq!(last["stopwise"]["probes"], 1, "probes were taken before the budget's limit: {last}");

    // Probes that fail (nothing listens on the probe port) fail open: the whole upstream stream,
    // then a chunk without choices that reports the stop that did not happen.
    let mut probe_down = request.clone();
    probe_down["model"] = json!("smol-probe-down");
    let open = stream(&proxy, &probe_down).await;
    assert!(open.done && open.error.is_none());
    let (report, relayed) = open.chunks.split_last().unwrap();
    assert_eq!(comparable(relayed), comparable(&direct.chunks));
    assert_eq!(report["choices"], json!([]));
    assert_eq!((&report["stopwise"]["stopped"], &report["stopwise"]["probes"]), (&json!(false), &json!(0)));

    // Not streaming with stopping off: the upstream's response body itself.
    let mut whole = request.clone();
    whole["stream"] = json!(false);
    let direct_whole: Value = reqwest::Client::new()
        .post(format!("{}/chat/completions", generator.base))
        .json(&whole)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let proxied_whole: Value = post(&proxy, &whole).await.json().await.unwrap();
    assert_eq!(proxied_whole["choices"], direct_whole["choices"]);
    assert_eq!(proxied_whole["choices"][0]["message"]["content"].as_str().unwrap(), direct.content());

    // Raw completions: the same stream up to the stop point, the probe a raw continuation.
    let prompt = format!("Question: {QUESTION}\nAnswer: Let's think step by step.");
    let completion = json!({"model": "smol", "prompt": prompt, "max_tokens": 200, "temperature": 0, "stream": true});
    let client = reqwest::Client::new();
    let direct = client.post(format!("{}/completions", generator.base)).json(&completion).send().await.unwrap();
    let direct = Streamed::parse(&direct.text().await.unwrap());
    let mut stopping = completion.clone();
    stopping["stopwise"] = json!({"policy": {"type": "budget", "max_tokens": 32}});
    let on = client.post(format!("{proxy}/v1/completions")).json(&stopping).send().await.unwrap();
    let on = Streamed::parse(&on.text().await.unwrap());
    let last = on.last();
    eprintln!("completion stopped: {last}");
    assert_eq!((&last["stopwise"]["stopped"], &last["object"]), (&json!(true), &json!("text_completion")), "{last}");
    let relayed = on.chunks.len() - 2;
    assert!(relayed < direct.chunks.len(), "the stop came after the upstream had finished");
    assert_eq!(comparable(&on.chunks[..relayed]), comparable(&direct.chunks[..relayed]));
    let forced = on.chunks[relayed]["choices"][0]["text"].as_str().unwrap();
    assert!(forced.starts_with("\n\n**Final Answer**: "), "{forced:?}");

    // The start-up self-test, run again on demand: llama-cpp-python streams, and its second
    // instance continues a raw ChatML prompt with log-probs.
    let report: Value = reqwest::get(format!("{proxy}/admin/capabilities")).await.unwrap().json().await.unwrap();
    eprintln!("capabilities: {report:#}");
    let found = &report["routes"]["smol"]["capabilities"];
    assert_eq!(found["streams"]["ok"], true, "{found}");
    assert_eq!(found["prefill"]["ok"], true, "{found}");
    assert_eq!(found["probe_logprobs"]["ok"], true, "{found}");
    for name in ["logprobs", "abort_on_disconnect", "usage_in_stream"] {
        assert!(found[name]["ok"].is_boolean(), "{name}: {found}");
    }
}
