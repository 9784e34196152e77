//! An upstream that misbehaves never holds a client without bound, never makes the proxy buffer
//! without bound, and never receives a client's request somewhere it was not configured to go.
//! Each upstream here is a real socket that sends exactly the bytes of the fault: the only way to
//! produce these faults.
#![allow(clippy::unwrap_used)] // helpers outside #[test] functions

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the upstream does after its fixed bytes.
#[derive(Clone, Copy)]
enum Tail {
    /// Holds the connection open in silence.
    Silent,
    /// Sends this chunk again and again until the peer leaves.
    Endless(&'static [u8]),
}

/// A raw-socket upstream: every connection gets `bytes`, then `tail`.
async fn raw_upstream(bytes: String, tail: Tail) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else { return };
            let bytes = bytes.clone();
            tokio::spawn(async move {
                let mut request = vec![0u8; 64 * 1024];
                let _ = socket.read(&mut request).await;
                if socket.write_all(bytes.as_bytes()).await.is_err() {
                    return;
                }
                match tail {
                    Tail::Silent => tokio::time::sleep(Duration::from_secs(120)).await,
                    Tail::Endless(chunk) => while socket.write_all(chunk).await.is_ok() {},
                }
            });
        }
    });
    format!("http://{address}/v1")
}

fn route(upstream: &str, policy: &str, extra: &str) -> String {
    format!(
        "[[routes]]\nmodel = \"m\"\nupstream = \"{upstream}\"\ntask = \"numeric\"\npolicy = {policy}\n\
         probe = {{ interval = 1, timeout_ms = 500 }}\non_missing_capability = \"degrade\"\nidle_timeout_ms = 400\n{extra}"
    )
}

/// POSTs `body`; the status and body text, or None if no answer came within 20 s (the fault).
async fn call(base: &str, body: &Value) -> Option<(u16, String)> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(20)).build().unwrap();
    let response = client.post(format!("{base}/v1/chat/completions")).json(body).send().await.ok()?;
    let status = response.status().as_u16();
    Some((status, response.text().await.ok()?))
}

fn sse_chunk(text: &str) -> String {
    let chunk = json!({"id": "up-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}]});
    format!("data: {chunk}\n\n")
}

const SSE_HEAD: &str = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_streamed_reply_that_never_comes_is_a_504_after_the_idle_timeout() {
    let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n";
    let upstream = raw_upstream(head.into(), Tail::Silent).await;
    let base = start(&route(&upstream, "\"never\"", ""), None);
    let started = Instant::now();
    let (status, body) = call(&base, &chat("m", "hi", 8, false, Value::Null)).await.expect("an answer, not a hang");
    assert_eq!(status, 504, "{body}");
    assert!(body.contains("idle_timeout_ms"), "{body}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_status_with_a_silent_or_endless_body_is_answered_at_once() {
    let head = "HTTP/1.1 500 Internal Server Error\r\ncontent-type: text/plain\r\n\r\nsomething broke ";
    for tail in [Tail::Silent, Tail::Endless(b"and on and on ")] {
        let upstream = raw_upstream(head.into(), tail).await;
        let base = start(&route(&upstream, "\"never\"", ""), None);
        for stream in [false, true] {
            let (status, body) =
                call(&base, &chat("m", "hi", 8, stream, Value::Null)).await.expect("an answer, not a hang");
            assert_eq!(status, 500, "{body}");
            assert!(body.contains("something broke"), "{body}");
            assert!(body.len() < 4096, "the error body is cut short, not relayed whole: {} bytes", body.len());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_streamed_reply_over_the_limit_is_refused() {
    let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n{\"padding\": \"";
    let upstream = raw_upstream(head.into(), Tail::Endless(&[b'x'; 4096])).await;
    let base = start(&route(&upstream, "\"never\"", "max_response_bytes = 100000\n"), None);
    let (status, body) = call(&base, &chat("m", "hi", 8, false, Value::Null)).await.expect("an answer, not a hang");
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("max_response_bytes"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_data_event_does_not_abort_the_stream() {
    let bytes = format!("{SSE_HEAD}{}data:\n\n{}data: [DONE]\n\n", sse_chunk("Hel"), sse_chunk("lo"));
    let upstream = raw_upstream(bytes, Tail::Silent).await;
    let base = start(&route(&upstream, "\"never\"", ""), None);
    let streamed = stream(&base, &chat("m", "hi", 8, true, Value::Null)).await;
    assert_eq!(streamed.error, None);
    assert_eq!(streamed.content(), "Hello");
    assert!(streamed.done);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_sse_line_is_an_error_event_not_unbounded_memory() {
    let bytes = format!("{SSE_HEAD}{}data: {{\"never\": \"", sse_chunk("Hello"));
    let upstream = raw_upstream(bytes, Tail::Endless(&[b'z'; 8192])).await;
    let base = start(&route(&upstream, "\"never\"", "max_event_bytes = 65536\n"), None);
    let streamed = stream(&base, &chat("m", "hi", 8, true, Value::Null)).await;
    assert_eq!(streamed.content(), "Hello", "what came before the long line is relayed");
    let error = streamed.error.expect("an error event");
    assert!(error["error"]["message"].as_str().unwrap().contains("max_event_bytes"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_is_not_followed_so_the_prompt_stays_where_it_was_sent() {
    // The redirect target counts the bytes it is sent: a followed 307 would POST the whole body.
    let received = Arc::new(AtomicUsize::new(0));
    let target = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target_address = target.local_addr().unwrap();
    let counter = received.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = target.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 64 * 1024];
                while let Ok(n @ 1..) = socket.read(&mut buffer).await {
                    counter.fetch_add(n, Ordering::SeqCst);
                }
            });
        }
    });
    let head = format!(
        "HTTP/1.1 307 Temporary Redirect\r\nlocation: http://{target_address}/v1/chat/completions\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    );
    let upstream = raw_upstream(head, Tail::Silent).await;
    let base = start(&route(&upstream, "\"never\"", ""), None);
    for stream in [false, true] {
        let (status, body) = call(&base, &chat("m", "SECRET PROMPT", 8, stream, Value::Null)).await.expect("an answer");
        assert_eq!(status, 502, "a redirect is an upstream fault, not something to pass on: {body}");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(received.load(Ordering::SeqCst), 0, "the redirect target received a request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_probe_reports_its_status_without_the_body_the_upstream_echoed() {
    // Upstreams echo the prompt in their errors; the probe's error ends up in the server's log.
    let head = "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n\
        {\"error\": {\"message\": \"bad prompt: SECRET PROMPT TEXT\"}}";
    let upstream = raw_upstream(head.into(), Tail::Silent).await;
    let prober = stopwise_serve::http_upstream::HttpProber {
        client: reqwest::Client::new(),
        base: upstream,
        mode: stopwise_serve::config::ProbeMode::ContinueFinalMessage,
        model: json!("m"),
        input: stopwise_serve::http_upstream::ProbeInput::Messages(Arc::new(vec![
            json!({"role": "user", "content": "SECRET PROMPT TEXT"}),
        ])),
        suffix: "\n\nFinal answer: ".into(),
        max_tokens: 8,
        timeout: Duration::from_secs(5),
        default_system: None,
    };
    let error = stopwise_serve::session::Prober::probe(&prober, "so far".into(), 4).await.unwrap_err();
    assert!(error.contains("400"), "{error}");
    assert!(!error.contains("SECRET"), "the upstream's body is not in the error: {error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_method_gets_an_openai_shaped_405() {
    let upstream = raw_upstream(SSE_HEAD.into(), Tail::Silent).await;
    let base = start(&route(&upstream, "\"never\"", ""), None);
    let response = reqwest::Client::new().get(format!("{base}/v1/chat/completions")).send().await.unwrap();
    assert_eq!(response.status(), 405);
    let body: Value = response.json().await.unwrap();
    assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains("method")), "{body}");
}
