//! The HTTP surface: thin handlers over typed state; every failure is an [`ApiError`].

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Map, Value};
use stopwise_core::policy::PolicySpec;
use stopwise_engine::Engine;
use tokio::sync::mpsc;

use crate::config::{Route, Settings, Upstream, DEFAULT_MODEL_NAME};
use crate::error::ApiError;
use crate::http_upstream::{self, HttpProber};
use crate::request::ChatRequest;
use crate::session::{self, AbortOnDrop, Probes, StopPlan};
use crate::sse::Frame;

/// Pieces buffered between an upstream and its session: enough to absorb a burst, small enough
/// that a stalled client pushes back on the upstream.
const PIECE_BUFFER: usize = 64;

pub struct AppState {
    routes: BTreeMap<String, Route>,
    engine: Option<Arc<dyn Engine>>,
    client: reqwest::Client,
    body_limit: usize,
}

impl AppState {
    /// `engine` must be present when a route's upstream is `embedded`.
    pub fn new(settings: &Settings, engine: Option<Arc<dyn Engine>>) -> Result<Self, String> {
        if engine.is_none() && settings.routes.iter().any(|r| r.upstream == Upstream::Embedded) {
            return Err("a route uses the embedded engine but none was loaded".into());
        }
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        let mut routes: BTreeMap<String, Route> =
            settings.routes.iter().map(|r| (r.model.clone(), r.clone())).collect();
        // The embedded default route also answers to the model file's name, as clients that list
        // `/v1/models` and pick the model by its file would expect.
        if let (Some(engine), Some(route)) = (&engine, routes.get(DEFAULT_MODEL_NAME)) {
            if route.upstream == Upstream::Embedded && !routes.contains_key(engine.model_name()) {
                let alias = Route { model: engine.model_name().to_owned(), ..route.clone() };
                routes.insert(alias.model.clone(), alias);
            }
        }
        Ok(AppState { routes, engine, client, body_limit: settings.body_limit })
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.body_limit;
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .fallback(|| async { ApiError { status: StatusCode::NOT_FOUND, ..ApiError::bad_json("no such endpoint") } })
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

async fn models(State(state): State<Arc<AppState>>) -> Json<Value> {
    let data: Vec<Value> = state
        .routes
        .keys()
        .map(|m| json!({"id": m, "object": "model", "created": 0, "owned_by": "stopwise"}))
        .collect();
    Json(json!({"object": "list", "data": data}))
}

/// Ready when every HTTP upstream answers `GET /models` (the embedded engine is loaded before
/// the server listens).
async fn readyz(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    for route in state.routes.values() {
        let main = match &route.upstream {
            Upstream::Http(base) => Some(base.as_str()),
            Upstream::Embedded => None,
        };
        for base in main.into_iter().chain(route.probe.upstream.as_deref()) {
            let url = format!("{}/models", base.trim_end_matches('/'));
            let ok = state.client.get(&url).timeout(Duration::from_secs(2)).send().await;
            if !ok.is_ok_and(|r| r.status().is_success()) {
                return Err(ApiError::unavailable(format!("upstream {url} of model `{}` is not ready", route.model)));
            }
        }
    }
    Ok(Json(json!({"status": "ready"})))
}

async fn chat_completions(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::too_large(state.body_limit),
        _ => ApiError::bad_json(e.body_text()),
    })?;
    let req = ChatRequest::parse(&body)?;
    let route = state.routes.get(&req.model).ok_or_else(|| {
        ApiError::unknown_model(&req.model, &state.routes.keys().map(String::as_str).collect::<Vec<_>>())
    })?;
    let policy = match (&req.extension.disable, &req.extension.policy) {
        (true, _) => PolicySpec::Never,
        (false, Some(policy)) => policy.clone(),
        (false, None) => route.policy.clone(),
    };
    let stopping = policy != PolicySpec::Never;
    // With stopping off an HTTP upstream gets the request as is, `n` included.
    if req.n != 1 && (stopping || route.upstream == Upstream::Embedded) {
        return Err(ApiError::invalid("n", "only n = 1 is supported when stopwise may stop or on the embedded model"));
    }
    let (tx, rx) = mpsc::channel(PIECE_BUFFER);
    // `probes` is `Some` exactly when stopping is on.
    let (producer, probes) = match &route.upstream {
        Upstream::Embedded => {
            let engine = state.engine.as_deref().ok_or_else(|| ApiError::internal("no embedded engine loaded"))?;
            let handle = crate::embedded::submit(engine, &req, stopping.then_some(&route.probe))?;
            let probes = stopping.then(|| Probes::Engine(handle.probe_requester()));
            (tokio::spawn(crate::embedded::produce(handle, route.model.clone(), tx)), probes)
        }
        Upstream::Http(base) => {
            let mut upstream_body = req.raw.clone();
            if let Some(model) = &route.upstream_model {
                upstream_body.insert("model".into(), json!(model));
            }
            if !stopping && !req.stream {
                return passthrough(&state.client, base, &upstream_body).await;
            }
            // Stopping needs the tokens as they come, whatever the client asked for.
            upstream_body.insert("stream".into(), json!(true));
            let probes = stopping.then(|| Probes::Launch(Arc::new(http_prober(&state.client, route, &upstream_body))));
            (tokio::spawn(http_upstream::stream_chat(state.client.clone(), base.clone(), upstream_body, tx)), probes)
        }
    };
    let plan = probes.map(|probes| StopPlan {
        policy,
        task: route.task,
        interval: route.probe.interval,
        answer_template: route.answer_template.clone(),
        max_tokens: req.max_tokens,
        stop: req.stop.clone(),
        probes,
    });
    let (out_tx, mut out) = mpsc::channel(PIECE_BUFFER);
    tokio::spawn(session::run(AbortOnDrop(producer), rx, plan, out_tx));
    // A failure before the first frame (upstream unreachable, upstream error status) is answered
    // with its own status rather than as an event in a 200 stream.
    let first = match out.recv().await {
        Some(Frame::Error(e)) => return Err(e),
        Some(frame) => frame,
        None => return Err(ApiError::internal("the session ended without a response")),
    };
    if req.stream {
        Ok(stream_response(first, out))
    } else {
        collect(first, out).await.map(|v| Json(v).into_response())
    }
}

fn http_prober(client: &reqwest::Client, route: &Route, body: &Map<String, Value>) -> HttpProber {
    HttpProber {
        client: client.clone(),
        base: route.probe_base().unwrap_or_default().to_owned(),
        mode: route.probe.mode,
        model: body.get("model").cloned().unwrap_or(Value::Null),
        messages: Arc::new(body.get("messages").and_then(Value::as_array).cloned().unwrap_or_default()),
        suffix: route.probe.suffix.clone(),
        max_tokens: route.probe.max_tokens,
        timeout: Duration::from_millis(route.probe.timeout_ms),
        default_system: route.probe.default_system.clone(),
    }
}

/// Stopping off and no stream: the upstream's own response, status and body untouched.
async fn passthrough(client: &reqwest::Client, base: &str, body: &Map<String, Value>) -> Result<Response, ApiError> {
    let url = format!("{base}/chat/completions");
    let response = client.post(&url).json(body).send().await.map_err(|e| ApiError::upstream(format!("{url}: {e}")))?;
    let status = response.status();
    let bytes = response.bytes().await.map_err(|e| ApiError::upstream(format!("{url}: {e}")))?;
    if !status.is_success() {
        return Err(ApiError::from_upstream(status.as_u16(), &String::from_utf8_lossy(&bytes)));
    }
    Ok(([(header::CONTENT_TYPE, "application/json")], bytes).into_response())
}

fn stream_response(first: Frame, out: mpsc::Receiver<Frame>) -> Response {
    let frames = futures_util::stream::unfold((Some(first), out), |(first, mut out)| async move {
        let frame = match first {
            Some(frame) => frame,
            None => out.recv().await?,
        };
        Some((Ok::<_, Infallible>(frame.to_bytes()), (None, out)))
    });
    ([(header::CONTENT_TYPE, "text/event-stream"), (header::CACHE_CONTROL, "no-cache")], Body::from_stream(frames))
        .into_response()
}

/// Folds the stream into one `chat.completion` object for a client that did not ask to stream.
async fn collect(first: Frame, mut out: mpsc::Receiver<Frame>) -> Result<Value, ApiError> {
    let mut content = String::new();
    let mut reasoning = String::new();
    let mut last = Value::Null;
    let (mut finish_reason, mut usage, mut extension) = (Value::Null, Value::Null, Value::Null);
    let mut next = Some(first);
    loop {
        let current = match next.take() {
            Some(frame) => frame,
            None => out.recv().await.ok_or_else(|| ApiError::internal("the stream ended without [DONE]"))?,
        };
        match current {
            Frame::Data(data) => {
                let chunk: Value = serde_json::from_str(&data)
                    .map_err(|e| ApiError::upstream(format!("the upstream sent a chunk that is not JSON: {e}")))?;
                let choice = &chunk["choices"][0];
                content.push_str(choice["delta"]["content"].as_str().unwrap_or_default());
                reasoning.push_str(choice["delta"]["reasoning_content"].as_str().unwrap_or_default());
                for (slot, value) in [
                    (&mut finish_reason, &choice["finish_reason"]),
                    (&mut usage, &chunk["usage"]),
                    (&mut extension, &chunk["stopwise"]),
                ] {
                    if !value.is_null() {
                        *slot = value.clone();
                    }
                }
                last = chunk;
            }
            Frame::Error(e) => return Err(e),
            Frame::Done => break,
        }
    }
    let mut message = json!({"role": "assistant", "content": content});
    if !reasoning.is_empty() {
        message["reasoning_content"] = json!(reasoning);
    }
    let mut response = json!({
        "id": last["id"], "object": "chat.completion", "created": last["created"], "model": last["model"],
        "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish_reason}],
        "usage": usage,
    });
    if !extension.is_null() {
        response["stopwise"] = extension;
    }
    Ok(response)
}
