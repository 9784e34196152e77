//! stopwise-serve: `stopwise serve`, an OpenAI-compatible streaming proxy that stops reasoning
//! early.
//!
//! Clients point their OpenAI SDK at it instead of at vLLM, llama.cpp or llama-cpp-python. Each
//! route maps a model name to an upstream (an OpenAI-compatible server, or the embedded engine)
//! and a stop policy. The client's stream is the upstream's own stream, relayed chunk by chunk;
//! every `interval` tokens the policy's [`Rule`](stopwise_core::rules::Rule) says whether it needs
//! the model's answer so far; only then does a probe ask for it (the stream never waits for it),
//! and the rule decides.
//! On stop, the upstream request is cancelled and the stream ends with the forced answer, the
//! usage of what the client received, and a `stopwise` object accounting for the probes. Probe
//! failures fail open; upstream failures become OpenAI-style error objects.

pub mod app;
pub mod audit;
pub mod bench;
pub mod capabilities;
pub mod config;
pub mod dashboard;
pub mod embedded;
pub mod error;
pub mod http_upstream;
pub mod metrics;
pub mod request;
pub mod session;
pub mod shape;
pub mod sse;

use std::sync::Arc;

use stopwise_engine::{resolve_model, Engine, LlamaConfig, LlamaEngine};
use tokio::net::TcpListener;

pub use app::{router, AppState};
pub use config::{Config, Overrides, Settings};
pub use error::ApiError;

/// Loads the embedded engine when a route needs it. Blocking (reads the model file): call it
/// before the runtime serves requests, or from `spawn_blocking`.
pub fn load_engine(settings: &Settings) -> Result<Option<Arc<dyn Engine>>, String> {
    if !settings.routes.iter().any(|r| r.upstream == config::Upstream::Embedded) {
        return Ok(None);
    }
    let engine = &settings.engine;
    let path = resolve_model(engine.model.as_deref()).map_err(|e| e.to_string())?;
    let mut config = LlamaConfig::new(path);
    config.parallel = engine.parallel.unwrap_or(config.parallel).max(1);
    config.threads = engine.threads.unwrap_or(config.threads);
    config.queue_limit = engine.queue_limit.unwrap_or(config.queue_limit);
    config.n_ctx_per_seq = engine.context.unwrap_or(config.n_ctx_per_seq);
    let engine = LlamaEngine::load(config).map_err(|e| e.to_string())?;
    Ok(Some(Arc::new(engine)))
}

/// Serves on `listener` until it fails or the process gets ctrl-c or SIGTERM (what container
/// runtimes send); requests in flight then finish before it returns.
pub async fn serve(settings: &Settings, engine: Option<Arc<dyn Engine>>, listener: TcpListener) -> Result<(), String> {
    serve_then(settings, engine, listener, || {}).await
}

/// [`serve`], calling `ready` once the self-test has passed and shutdown signals are handled,
/// just before the first request is accepted.
pub async fn serve_then(
    settings: &Settings,
    engine: Option<Arc<dyn Engine>>,
    listener: TcpListener,
    ready: impl FnOnce(),
) -> Result<(), String> {
    // Listening for the signals starts now, so that one sent during the self-test is not lost.
    let shutdown = shutdown_signal()?;
    let mut state = AppState::new(settings, engine)?;
    state.open_store(&settings.store).await?;
    state.self_test().await?;
    let state = Arc::new(state);
    state.spawn_sync(settings.store.sync);
    ready();
    let served = axum::serve(listener, router(state.clone()))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| format!("server failed: {e}"));
    // The traces of the last requests are written before the process ends.
    state.flush_store().await;
    served
}

#[cfg(unix)]
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>, String> {
    use tokio::signal::unix::{signal, SignalKind};
    let listen = |kind| signal(kind).map_err(|e| format!("cannot listen for signals: {e}"));
    let (mut interrupt, mut terminate) = (listen(SignalKind::interrupt())?, listen(SignalKind::terminate())?);
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        tracing::info!("shutting down: finishing the requests in flight");
    })
}

#[cfg(not(unix))]
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>, String> {
    Ok(async {
        // Without a ctrl-c handler the server simply runs until killed.
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
        tracing::info!("shutting down: finishing the requests in flight");
    })
}
