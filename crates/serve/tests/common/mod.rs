//! Helpers shared by the serve integration tests: the real default model, and a `stopwise serve`
//! started in-process on a free port with its own runtime thread.

// Each test binary uses its own subset of these helpers.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use serde_json::Value;
use stopwise_engine::{fetch_default_model, resolve_model, Engine, LlamaConfig, LlamaEngine};
use stopwise_serve::{Config, Overrides};

pub const QUESTION: &str = "Natalia sold clips to 48 of her friends in April, and then she sold half as many \
    clips in May. How many clips did Natalia sell altogether in April and May? Explain step by step.";

pub fn model_path() -> PathBuf {
    match std::env::var_os("STOPWISE_MODEL") {
        Some(path) => resolve_model(Some(Path::new(&path))).unwrap(),
        None => fetch_default_model(|line| eprintln!("model: {line}")).unwrap(),
    }
}

/// The embedded engine on the default model, small enough for the tests.
pub fn engine() -> Arc<LlamaEngine> {
    engine_with(2, 64)
}

pub fn engine_with(parallel: u32, queue_limit: usize) -> Arc<LlamaEngine> {
    let mut config = LlamaConfig::new(model_path());
    config.n_ctx_per_seq = 1024;
    config.parallel = parallel;
    config.queue_limit = queue_limit;
    Arc::new(LlamaEngine::load(config).unwrap())
}

/// Starts the server for `toml` on 127.0.0.1 and returns its base URL (`http://127.0.0.1:P`).
/// The trace store is off unless `toml` has a `[store]` table: tests never write into the
/// user's own store.
pub fn start(toml: &str, engine: Option<Arc<dyn Engine>>) -> String {
    let store_off = !toml.contains("[store]");
    let env = |var: &str| (var == "STOPWISE_STORE" && store_off).then(|| "off".to_owned());
    let settings = Config::parse(toml).unwrap().resolve(&Overrides::default(), env).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            stopwise_serve::serve(&settings, engine, listener).await.unwrap();
        });
    });
    let base = format!("http://{}", rx.recv().unwrap());
    // The listener is bound before the start-up self-test runs; serving begins after it.
    for _ in 0..600 {
        if std::net::TcpStream::connect(&base[7..]).is_ok() && health(&base) {
            return base;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("the server at {base} never became healthy");
}

fn health(base: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut socket) = std::net::TcpStream::connect(&base[7..]) else { return false };
    let _ = socket.set_read_timeout(Some(std::time::Duration::from_millis(500)));
    let request = format!("GET /healthz HTTP/1.1\r\nhost: {}\r\nconnection: close\r\n\r\n", &base[7..]);
    let mut answer = String::new();
    socket.write_all(request.as_bytes()).is_ok()
        && socket.read_to_string(&mut answer).is_ok()
        && answer.starts_with("HTTP/1.1 200")
}

/// A streamed response, parsed: the data chunks, whether `[DONE]` came, and any `error` event.
#[derive(Debug, Default)]
pub struct Streamed {
    pub chunks: Vec<Value>,
    pub done: bool,
    pub error: Option<Value>,
}

impl Streamed {
    pub fn parse(body: &str) -> Self {
        let mut out = Streamed::default();
        let body = body.replace("\r\n", "\n");
        for event in body.split("\n\n") {
            let is_error = event.lines().any(|l| l == "event: error");
            let data: String = event.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
            // Events without data are keep-alive comments (`: ping`).
            if data.is_empty() {
                continue;
            }
            if data == "[DONE]" {
                out.done = true;
            } else if is_error {
                out.error = Some(serde_json::from_str(&data).unwrap());
            } else {
                out.chunks.push(serde_json::from_str(&data).unwrap());
            }
        }
        out
    }

    pub fn content(&self) -> String {
        self.chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect()
    }

    pub fn last(&self) -> &Value {
        self.chunks.last().unwrap()
    }
}

pub fn chat(model: &str, question: &str, max_tokens: u32, stream: bool, extension: Value) -> Value {
    let mut body = serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": question}],
        "temperature": 0,
        "max_tokens": max_tokens,
        "stream": stream,
    });
    if !extension.is_null() {
        body["stopwise"] = extension;
    }
    body
}

pub async fn post(base: &str, body: &Value) -> reqwest::Response {
    reqwest::Client::new().post(format!("{base}/v1/chat/completions")).json(body).send().await.unwrap()
}

pub async fn stream(base: &str, body: &Value) -> Streamed {
    let response = post(base, body).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    Streamed::parse(&response.text().await.unwrap())
}

/// Whether `python3` can import `module`; panics when it cannot and skipping was not asked for.
pub fn python_has(module: &str) -> bool {
    let ok = Command::new("python3").args(["-c", &format!("import {module}")]).status().is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var_os("STOPWISE_SKIP_PYTHON_TESTS").is_some(),
            "python3 cannot import `{module}`; run the tests with `scripts/test` (it installs the pinned \
             packages of scripts/requirements-test.txt into target/python) or set STOPWISE_SKIP_PYTHON_TESTS=1 to skip"
        );
        eprintln!("\n!!! SKIPPED: python3 cannot import `{module}` and STOPWISE_SKIP_PYTHON_TESTS is set !!!\n");
    }
    ok
}

/// A raw-socket upstream that answers every request with status 200 and one SSE chunk per text,
/// then holds the connection for `hold` and drops it without `data: [DONE]`: the only way to get
/// a stream that breaks off (short `hold`) or goes silent (long `hold`).
pub async fn raw_sse_upstream(texts: &'static [&'static str], hold: std::time::Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let mut request = vec![0u8; 64 * 1024];
                let _ = socket.read(&mut request).await;
                let body: String = texts
                    .iter()
                    .map(|text| {
                        let chunk = serde_json::json!({"id": "up-1", "object": "chat.completion.chunk", "created": 1,
                            "model": "m", "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}]});
                        format!("data: {chunk}\n\n")
                    })
                    .collect();
                let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n";
                let _ = socket.write_all(format!("{head}{body}").as_bytes()).await;
                let _ = socket.flush().await;
                tokio::time::sleep(hold).await;
            });
        }
    });
    format!("http://{address}/v1")
}
