//! The HTTP surface: thin handlers over typed state; every failure is an [`ApiError`].

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::{json, Map, Value};
use stopwise_core::rules::PolicySpec;
use stopwise_engine::{Engine, ProbeTrigger, Request};
use tokio::sync::mpsc;

use crate::audit::{AuditJob, Live};
use crate::capabilities::{self, Capabilities};
use crate::config::{OnMissing, Route, Settings, Upstream, DEFAULT_MODEL_NAME};
use crate::error::ApiError;
use crate::http_upstream::{self, Added, HttpProber, ProbeInput};
use crate::metrics::{Meter, Outcome};
use crate::request::{ClientRequest, Endpoint, Input};
use crate::session::{self, AbortOnDrop, Probes, StopPlan, TraceSink};
use crate::sse::Frame;

/// The API served, as OpenAPI 3.1 (kept by hand: the handlers take raw JSON so that every
/// parameter reaches the upstream, which schema derives would not describe).
pub const OPENAPI: &str = include_str!("../openapi.json");

/// Pieces buffered between an upstream and its session: enough to absorb a burst, small enough
/// that a stalled client pushes back on the upstream.
const PIECE_BUFFER: usize = 64;

pub struct AppState {
    routes: BTreeMap<String, Route>,
    engine: Option<Arc<dyn Engine>>,
    /// Per route: each carries the route's API key, if any, on every request.
    clients: BTreeMap<String, reqwest::Client>,
    body_limit: usize,
    metrics: PrometheusHandle,
    admin_token: Option<String>,
    /// What each route's upstream was found able to do at start-up.
    capabilities: BTreeMap<String, Capabilities>,
    /// Routes serving without stopping because their upstream lacks what the policy needs.
    degraded: BTreeMap<String, String>,
    /// Where traces and feedback go (`None`: `[store] url = "off"`).
    store: Option<(stopwise_db::Store, stopwise_db::Writer)>,
    feedback_grace: Duration,
    /// Per route: audits and the live estimate.
    live: BTreeMap<String, Arc<Live>>,
}

/// Largest feedback body: a response id and a few gold answers.
const FEEDBACK_BODY_LIMIT: usize = 256 * 1024;

impl AppState {
    /// `engine` must be present when a route's upstream is `embedded`.
    pub fn new(settings: &Settings, engine: Option<Arc<dyn Engine>>) -> Result<Self, String> {
        if engine.is_none() && settings.routes.iter().any(|r| r.upstream == Upstream::Embedded) {
            return Err("a route uses the embedded engine but none was loaded".into());
        }
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
        let clients = routes
            .values()
            .map(|route| Ok((route.model.clone(), http_client(route.api_key.as_deref())?)))
            .collect::<Result<_, String>>()?;
        let metrics = crate::metrics::handle()?;
        let live = routes
            .values()
            .map(|route| Ok((route.model.clone(), Arc::new(Live::new(route, route.upstream == Upstream::Embedded)?))))
            .collect::<Result<_, String>>()?;
        Ok(AppState {
            live,
            routes,
            engine,
            clients,
            body_limit: settings.body_limit,
            metrics,
            admin_token: settings.admin_token.clone(),
            capabilities: BTreeMap::new(),
            degraded: BTreeMap::new(),
            store: None,
            feedback_grace: settings.store.feedback_grace,
        })
    }

    /// Opens the configured store and starts its writer (on the current runtime). A store that
    /// cannot be opened at start-up is an error: the operator asked for one.
    pub async fn open_store(&mut self, settings: &crate::config::StoreSettings) -> Result<(), String> {
        let Some(url) = &settings.url else { return Ok(()) };
        let store = stopwise_db::Store::open(url).await.map_err(|e| e.to_string())?;
        tracing::info!("trace store: {}", stopwise_db::redacted(url));
        let writer = stopwise_db::Writer::start(store.clone(), settings.queue);
        self.store = Some((store, writer));
        Ok(())
    }

    /// Every `every`, adopts the settings other replicas on the same store switched their routes
    /// to. Runs until the server stops.
    pub fn spawn_sync(self: &Arc<Self>, every: Duration) {
        let Some((store, _)) = &self.store else { return };
        let (store, state) = (store.clone(), Arc::downgrade(self));
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(state) = state.upgrade() else { return };
                match store.route_states().await {
                    Ok(rows) => {
                        for (route, active, policy, updated_ms) in rows {
                            if let Some(live) = state.live.get(&route) {
                                live.adopt(active, &policy, updated_ms);
                            }
                        }
                    }
                    Err(e) => tracing::warn!("cannot read the routes' shared settings: {e}"),
                }
            }
        });
    }

    /// Waits until every trace handed to the store's writer so far is written or dropped.
    pub async fn flush_store(&self) {
        if let Some((_, writer)) = &self.store {
            writer.flush().await;
        }
    }

    /// Checks every route's upstream; a route whose policy needs a capability found missing
    /// refuses to start, or runs without stopping when configured to degrade.
    pub async fn self_test(&mut self) -> Result<(), String> {
        for route in self.routes.values_mut() {
            let found = capabilities::check(&self.clients[&route.model], route).await;
            if found.streams.ok.is_none() {
                tracing::warn!(
                    "model `{}`: upstream not reachable, capabilities unknown: {}",
                    route.model,
                    found.streams.detail
                );
            }
            let missing = found.missing_for(&route.policy);
            if !missing.is_empty() {
                let why = missing
                    .iter()
                    .map(|(name, check)| format!("{name} ({})", check.detail))
                    .collect::<Vec<_>>()
                    .join("; ");
                let message = format!(
                    "model `{}`: policy {} needs what its upstream lacks: {why}",
                    route.model,
                    route.policy.label()
                );
                if route.on_missing_capability == OnMissing::Refuse {
                    return Err(format!("{message}. Choose another policy, or set on_missing_capability = \"degrade\" to serve it without stopping"));
                }
                tracing::warn!("{message}; serving it without stopping (on_missing_capability = \"degrade\")");
                self.degraded.insert(route.model.clone(), message);
                route.policy = PolicySpec::NEVER;
            }
            self.capabilities.insert(route.model.clone(), found);
        }
        Ok(())
    }
}

/// The client for one route's upstream. Redirects are not followed: a redirect to another host
/// would carry the request body, prompt included, to wherever the upstream points.
fn http_client(api_key: Option<&str>) -> Result<reqwest::Client, String> {
    let mut headers = header::HeaderMap::new();
    if let Some(key) = api_key {
        let mut value = header::HeaderValue::try_from(format!("Bearer {key}"))
            .map_err(|_| "the API key holds characters a header cannot carry".to_owned())?;
        value.set_sensitive(true);
        headers.insert(header::AUTHORIZATION, value);
    }
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        // Idle keep-alive connections are closed after this, not kept for ever.
        .pool_idle_timeout(Duration::from_secs(30))
        .default_headers(headers)
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
}

impl AppState {
    fn client(&self, route: &Route) -> &reqwest::Client {
        &self.clients[&route.model]
    }

    /// Per route: audits and the live estimate (read by the dashboard).
    pub(crate) fn live(&self) -> &BTreeMap<String, Arc<Live>> {
        &self.live
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.body_limit;
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/v1/feedback", post(feedback).layer(DefaultBodyLimit::max(FEEDBACK_BODY_LIMIT)))
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .route("/admin/capabilities", get(admin_capabilities))
        .route("/admin/online", get(admin_online))
        .route("/admin/online/{model}", post(admin_online_action))
        .route("/openapi.json", get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }))
        .merge(crate::dashboard::routes())
        .fallback(|| async { ApiError { status: StatusCode::NOT_FOUND, ..ApiError::bad_json("no such endpoint") } })
        // axum's own 405 has an empty body; clients parse an OpenAI error object.
        .method_not_allowed_fallback(|| async {
            ApiError {
                status: StatusCode::METHOD_NOT_ALLOWED,
                ..ApiError::bad_json("this endpoint does not take that method")
            }
        })
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
            let ok = state.client(route).get(&url).timeout(Duration::from_secs(2)).send().await;
            if !ok.is_ok_and(|r| r.status().is_success()) {
                return Err(ApiError::unavailable(format!("upstream {url} of model `{}` is not ready", route.model)));
            }
        }
    }
    // A failing store does not make the server unready: requests are served all the same.
    let store = match &state.store {
        None => json!({"status": "off"}),
        Some((_, writer)) => match writer.stats().failing() {
            None => json!({"status": "ok", "queued": writer.depth()}),
            Some(error) => json!({"status": "failing", "error": error, "queued": writer.depth()}),
        },
    };
    Ok(Json(json!({"status": "ready", "store": store})))
}

/// `POST /v1/feedback`: `{"id": <response id>, "gold": [...]}`, `{"id", "correct": bool}` or
/// `{"id", "rating": x}`. Posting again for an id merges (the fields given replace earlier ones).
/// A response whose trace is not in the store yet (still being written, possibly by another
/// replica) is waited for up to the grace period, then the answer is 404. A 200 means stored.
async fn feedback(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let body = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::too_large(FEEDBACK_BODY_LIMIT),
        _ => ApiError::bad_json(e.body_text()),
    })?;
    let de = &mut serde_json::Deserializer::from_slice(&body);
    let feedback: stopwise_db::Feedback = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let message = e.inner().to_string();
        if path == "." {
            ApiError::bad_json(format!("feedback body: {message}"))
        } else {
            ApiError::invalid(path, message)
        }
    })?;
    feedback.validate().map_err(|stopwise_db::FeedbackError::Field { field, why }| ApiError::invalid(field, why))?;
    let Some((store, _)) = &state.store else {
        return Err(ApiError::unavailable("feedback needs the trace store, which is off (`[store] url = \"off\"`)"));
    };
    crate::metrics::feedback("received");
    let unavailable = |e: stopwise_db::DbError| ApiError::unavailable(format!("the trace store failed: {e}"));
    let deadline = Instant::now() + state.feedback_grace;
    while !store.has_trace(&feedback.id).await.map_err(unavailable)? {
        if Instant::now() >= deadline {
            crate::metrics::feedback("unknown_id");
            return Err(ApiError {
                status: StatusCode::NOT_FOUND,
                param: Some("id".into()),
                code: Some("response_not_found".into()),
                ..ApiError::bad_json(format!(
                    "no response `{}` in the trace store (waited {} ms for its trace)",
                    feedback.id,
                    state.feedback_grace.as_millis()
                ))
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    store.put_feedback(&feedback, session::now_ms()).await.map_err(unavailable)?;
    crate::metrics::feedback("stored");
    // Gold can make the response's audit count towards an EM-drop estimate.
    if let Ok(Some(trace)) = store.audit(&feedback.id).await {
        if let Some(live) = trace.served.as_ref().and_then(|s| state.live.get(&s.route)) {
            live.take_audit(&trace, Some(store));
        }
    }
    Ok(Json(json!({"id": feedback.id, "object": "feedback", "stored": true})))
}

fn missing_names(found: &Capabilities, policy: &PolicySpec) -> Vec<&'static str> {
    found.missing_for(policy).into_iter().map(|(name, _)| name).collect()
}

/// The checks run afresh, per route, with what the route's policy would miss. Needs
/// `Authorization: Bearer <admin token>` when an admin token is set.
async fn admin_capabilities(
    State(state): State<Arc<AppState>>,
    headers: axum::http::HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authorize(&state, &headers)?;
    let mut routes = Map::new();
    for route in state.routes.values() {
        let found = capabilities::check(state.client(route), route).await;
        let upstream = route.upstream.to_string();
        let stopping = match state.degraded.get(&route.model) {
            Some(why) => format!("off (degraded): {why}"),
            None if route.policy == PolicySpec::NEVER => "off".into(),
            None => "on".into(),
        };
        routes.insert(
            route.model.clone(),
            json!({
                "upstream": upstream, "probe_upstream": route.probe_base(), "policy": route.policy,
                "policy_version": route.policy.version(), "stopping": stopping,
                "missing_for_policy": missing_names(&found, &route.policy), "capabilities": found,
            }),
        );
    }
    Ok(Json(json!({"routes": routes})))
}

/// Admin endpoints need `Authorization: Bearer <admin token>` when a token is set. The token is
/// compared in constant time: how long a refusal takes says nothing of how much was right.
fn authorize(state: &AppState, headers: &axum::http::HeaderMap) -> Result<(), ApiError> {
    let Some(token) = &state.admin_token else { return Ok(()) };
    let given = headers.get(header::AUTHORIZATION).map(|v| v.as_bytes()).unwrap_or_default();
    let expected = format!("Bearer {token}");
    let same_length = given.len() == expected.len();
    let difference = given.iter().zip(expected.as_bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b));
    if same_length && difference == 0 {
        Ok(())
    } else {
        Err(ApiError::unauthorized("admin endpoints need `Authorization: Bearer <STOPWISE_ADMIN_TOKEN>`"))
    }
}

/// `GET /admin/online`: per route, the live estimate of every setting of its ladder, the active
/// one, the pending proposal and the recent changes.
async fn admin_online(
    State(state): State<Arc<AppState>>,
    headers: axum::http::HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authorize(&state, &headers)?;
    let routes: Map<String, Value> = state.live.iter().map(|(model, live)| (model.clone(), live.report())).collect();
    Ok(Json(json!({"routes": routes})))
}

/// `POST /admin/online/{model}`: `{"action": "approve"}` or `"reject"` (the pending proposal), or
/// `{"action": "set", "setting": N}` (the ladder's N-th setting becomes active).
async fn admin_online_action(
    State(state): State<Arc<AppState>>,
    axum::extract::Path(model): axum::extract::Path<String>,
    headers: axum::http::HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    authorize(&state, &headers)?;
    let live = state
        .live
        .get(&model)
        .ok_or_else(|| ApiError::unknown_model(&model, &state.live.keys().map(String::as_str).collect::<Vec<_>>()))?;
    let body = body.map_err(|e| ApiError::bad_json(e.body_text()))?;
    let action: Value = serde_json::from_slice(&body).map_err(|e| ApiError::bad_json(e.to_string()))?;
    let store = state.store.as_ref().map(|(store, _)| store);
    let change = match action["action"].as_str() {
        Some("approve") => live.decide_proposal(true, store),
        Some("reject") => live.decide_proposal(false, store),
        Some("set") => {
            let index = action["setting"]
                .as_u64()
                .ok_or_else(|| ApiError::invalid("setting", "give the ladder position as a number"))?;
            Some(live.set_active(index as usize, store).map_err(|why| ApiError::invalid("setting", why))?)
        }
        _ => return Err(ApiError::invalid("action", "must be `approve`, `reject` or `set`")),
    };
    Ok(Json(json!({"change": change, "online": live.report()})))
}

async fn render_metrics(State(state): State<Arc<AppState>>) -> Response {
    if let Some(engine) = &state.engine {
        crate::metrics::engine_load(&engine.stats());
    }
    if let Some((_, writer)) = &state.store {
        crate::metrics::store_queue(writer.depth());
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render()).into_response()
}

async fn chat_completions(State(state): State<Arc<AppState>>, body: Result<Bytes, BytesRejection>) -> Response {
    counted(Endpoint::Chat, complete(&state, Endpoint::Chat, body).await)
}

async fn completions(State(state): State<Arc<AppState>>, body: Result<Bytes, BytesRejection>) -> Response {
    counted(Endpoint::Completions, complete(&state, Endpoint::Completions, body).await)
}

fn counted(endpoint: Endpoint, result: Result<Response, ApiError>) -> Response {
    let response = result.unwrap_or_else(IntoResponse::into_response);
    crate::metrics::http_request(endpoint.path(), response.status().as_u16());
    response
}

async fn complete(
    state: &Arc<AppState>,
    endpoint: Endpoint,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let body = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::too_large(state.body_limit),
        _ => ApiError::bad_json(e.body_text()),
    })?;
    let req = ClientRequest::parse(endpoint, &body)?;
    let route = state.routes.get(&req.model).ok_or_else(|| {
        ApiError::unknown_model(&req.model, &state.routes.keys().map(String::as_str).collect::<Vec<_>>())
    })?;
    let live = &state.live[&route.model];
    let policy = match (&req.extension.disable, &req.extension.policy) {
        (true, _) => PolicySpec::NEVER,
        (false, Some(policy)) => policy.clone(),
        // The estimator's active setting, once it has moved the route off its configured one.
        (false, None) => live.active_policy().unwrap_or_else(|| route.policy.clone()),
    };
    let stopping = policy != PolicySpec::NEVER;
    // A per-request policy must not silently do nothing either.
    if let Some(found) = state.capabilities.get(&route.model) {
        let missing = missing_names(found, &policy);
        if !missing.is_empty() {
            return Err(ApiError::invalid(
                "stopwise.policy",
                format!("the upstream of `{}` lacks what this policy needs: {}", route.model, missing.join(", ")),
            ));
        }
    }
    // With stopping off an HTTP upstream gets the request as is, `n` included.
    if stopping || route.upstream == Upstream::Embedded {
        if req.n != 1 {
            return Err(ApiError::invalid(
                "n",
                "only n = 1 is supported when stopwise may stop or on the embedded model",
            ));
        }
        if req.input == Input::Batch {
            return Err(ApiError::invalid(
                "prompt",
                "one prompt as a string is supported when stopwise may stop or on the embedded model \
                 (lists of prompts and token arrays pass through with `\"stopwise\": {\"disable\": true}`)",
            ));
        }
    }
    let (tx, rx) = mpsc::channel(PIECE_BUFFER);
    let mut audit = None;
    // `probes` is `Some` exactly when stopping is on.
    let (producer, probes) = match &route.upstream {
        Upstream::Embedded => {
            let engine_arc = state.engine.clone().ok_or_else(|| ApiError::internal("no embedded engine loaded"))?;
            let engine = engine_arc.as_ref();
            let on_request = stopping.then_some((&route.probe, ProbeTrigger::OnRequest));
            let request = crate::embedded::request(&req, on_request)?;
            if let (true, Some((store, writer))) = (live.due(), &state.store) {
                // The same request (seed included), probed at every checkpoint, to its end.
                let every = ProbeTrigger::Every(route.probe.interval);
                let request = Request {
                    probe: crate::embedded::request(&req, Some((&route.probe, every)))?.probe,
                    ..request.clone()
                };
                audit = Some(AuditJob {
                    engine: engine_arc.clone(),
                    request,
                    live: live.clone(),
                    writer: writer.clone(),
                    store: store.clone(),
                });
            }
            let handle = crate::embedded::submit(engine, &req, request)?;
            let probes = stopping.then(|| Probes::Engine(handle.probe_requester()));
            (tokio::spawn(crate::embedded::produce(handle, endpoint, route.model.clone(), tx)), probes)
        }
        Upstream::Http(base) => {
            let mut upstream_body = req.raw.clone();
            if let Some(model) = &route.upstream_model {
                upstream_body.insert("model".into(), json!(model));
            }
            let url = format!("{base}/{}", endpoint.path());
            if !stopping && !req.stream {
                let meter = Meter::start(&route.model, endpoint, started);
                return passthrough(state.client(route), &url, &upstream_body, route.limits(), meter).await;
            }
            // Stopping needs the tokens as they come, whatever the client asked for, and a rule
            // that reads log-probs needs them even when the client did not ask (they are then
            // taken out of what it receives).
            upstream_body.insert("stream".into(), json!(true));
            let mut added = Added::default();
            if stopping && policy.reads_token_logprobs() && upstream_body.get("logprobs") != Some(&json!(true)) {
                added.logprobs = true;
                upstream_body.insert("logprobs".into(), json!(true));
            }
            let running_usage =
                state.capabilities.get(&route.model).is_some_and(|c| c.usage_in_stream.ok == Some(true));
            if stopping && running_usage {
                added = ask_running_usage(&mut upstream_body, added);
            }
            let probes =
                stopping.then(|| Probes::Launch(Arc::new(http_prober(state.client(route), route, &upstream_body))));
            let producer =
                http_upstream::stream(state.client(route).clone(), url, upstream_body, added, route.limits(), tx);
            (tokio::spawn(producer), probes)
        }
    };
    let plan = probes.map(|probes| StopPlan {
        policy,
        task: route.task,
        interval: route.probe.interval,
        answer_template: route.answer_template.clone(),
        reasoning_open: route.probe.reasoning_open.clone(),
        reasoning_close: route.probe.reasoning_close.clone(),
        max_tokens: req.max_tokens,
        max_probes: route.probe.max_probes,
        stop: req.stop.clone(),
        probes,
    });
    let sink = state.store.as_ref().map(|(_, writer)| TraceSink {
        writer: writer.clone(),
        route: route.model.clone(),
        model: route.upstream_model.clone().unwrap_or_else(|| req.model.clone()),
        probe: stopwise_core::trace::ProbeSettings {
            suffix: route.probe.suffix.clone(),
            max_tokens: route.probe.max_tokens,
            interval: route.probe.interval,
        },
        task: route.task,
        question: route.store_text.then(|| last_user_text(&req.input)).flatten(),
        store_text: route.store_text,
        started_ms: session::now_ms().saturating_sub(started.elapsed().as_millis() as u64),
        audit,
    });
    let (out_tx, mut out) = mpsc::channel(PIECE_BUFFER);
    let meter = Meter::start(&route.model, endpoint, started);
    tokio::spawn(session::run(AbortOnDrop(producer), rx, endpoint, plan, meter, sink, out_tx));
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
        crate::shape::collect(endpoint, first, &mut out).await.map(|v| Json(v).into_response())
    }
}

/// What a trace keeps as the question: the last user message, or the prompt.
fn last_user_text(input: &Input) -> Option<String> {
    match input {
        Input::Messages(messages) => messages.iter().rev().find(|m| m.role == "user").map(|m| m.content.clone()),
        Input::Prompt(prompt) => Some(prompt.clone()),
        Input::Batch => None,
    }
}

fn http_prober(client: &reqwest::Client, route: &Route, body: &Map<String, Value>) -> HttpProber {
    HttpProber {
        client: client.clone(),
        base: route.probe_base().unwrap_or_default().to_owned(),
        mode: route.probe.mode,
        model: body.get("model").cloned().unwrap_or(Value::Null),
        input: match body.get("prompt") {
            Some(prompt) => ProbeInput::Prompt(Arc::new(prompt_text(prompt))),
            None => ProbeInput::Messages(Arc::new(
                body.get("messages").and_then(Value::as_array).cloned().unwrap_or_default(),
            )),
        },
        suffix: route.probe.suffix.clone(),
        max_tokens: route.probe.max_tokens,
        timeout: Duration::from_millis(route.probe.timeout_ms),
        default_system: route.probe.default_system.clone(),
    }
}

/// Asks an upstream that can (vLLM) for the usage in every chunk, so that stopwise counts tokens
/// exactly however many a chunk carries, and knows the prompt's; what the client did not ask for
/// is taken out again.
fn ask_running_usage(body: &mut Map<String, Value>, mut added: Added) -> Added {
    let mut options = body.get("stream_options").and_then(Value::as_object).cloned().unwrap_or_default();
    let asked = |options: &Map<String, Value>, key: &str| options.get(key) == Some(&json!(true));
    added.counts_from_usage = true;
    added.running_usage = !asked(&options, "continuous_usage_stats");
    added.final_usage = !asked(&options, "include_usage");
    options.insert("include_usage".into(), json!(true));
    options.insert("continuous_usage_stats".into(), json!(true));
    body.insert("stream_options".into(), Value::Object(options));
    added
}

/// The one prompt of a completions request, which parsing has checked is a string or a list of
/// one string.
fn prompt_text(prompt: &Value) -> String {
    prompt.as_str().or_else(|| prompt[0].as_str()).unwrap_or_default().to_owned()
}

/// Stopping off and no stream: the upstream's own response, status and body untouched.
async fn passthrough(
    client: &reqwest::Client,
    url: &str,
    body: &Map<String, Value>,
    limits: http_upstream::Limits,
    mut meter: Meter,
) -> Result<Response, ApiError> {
    meter.finish(Outcome::Failed, 0, None);
    let silent = || {
        let ms = limits.idle_timeout.as_millis();
        ApiError::upstream_timeout(format!("{url} sent nothing for {ms} ms (the route's idle_timeout_ms)"))
    };
    let response = tokio::time::timeout(limits.idle_timeout, client.post(url).json(body).send())
        .await
        .map_err(|_| silent())?
        .map_err(|e| ApiError::upstream(format!("{url}: {e}")))?;
    let status = response.status();
    if !status.is_success() {
        let text = http_upstream::error_text(response, limits.idle_timeout).await;
        return Err(ApiError::from_upstream(status.as_u16(), &text));
    }
    let bytes = match http_upstream::read_body(response, limits.idle_timeout, limits.max_response_bytes).await {
        Ok(bytes) => bytes,
        Err(http_upstream::BodyError::Silent(_)) => return Err(silent()),
        Err(e) => return Err(ApiError::upstream(format!("{url} {e}"))),
    };
    let usage = serde_json::from_slice::<Value>(&bytes).ok().and_then(|v| v["usage"]["completion_tokens"].as_u64());
    meter.finish(Outcome::Completed, usage.unwrap_or(0) as u32, None);
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
