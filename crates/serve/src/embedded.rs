//! The in-process engine as the upstream. The engine decodes on its own worker thread and
//! reports through an async handle, so nothing here blocks the runtime. It probes between two
//! tokens (KV-cache rollback) where the session asks it to, so its probes cost no second request.

use serde_json::Value;
use stopwise_engine::{Engine, EngineError, Event, ProbePlan, ProbeTrigger, Prompt, Request, RequestHandle, Sampling};
use tokio::sync::mpsc;

use crate::config::ProbeConfig;
use crate::error::ApiError;
use crate::request::{ClientRequest, Endpoint, Input};
use crate::session::{new_id, now, Head, Piece, ProbeOutcome};
use crate::shape;

/// Generated tokens when the client sets no `max_tokens`.
pub const DEFAULT_MAX_TOKENS: u32 = 1024;

/// The engine request for a client's request: probes where the session asks for them
/// (`ProbeTrigger::OnRequest`), or at every checkpoint (an audit).
pub fn request(req: &ClientRequest, probe: Option<(&ProbeConfig, ProbeTrigger)>) -> Result<Request, ApiError> {
    let prompt = match &req.input {
        Input::Messages(messages) => Prompt::Chat(messages.clone()),
        Input::Prompt(prompt) => Prompt::Raw(prompt.clone()),
        Input::Batch => return Err(ApiError::invalid("prompt", "the embedded model takes one prompt as a string")),
    };
    let request = Request {
        prompt,
        max_tokens: req.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
        sampling: Sampling {
            // OpenAI's defaults.
            temperature: req.temperature.unwrap_or(1.0),
            top_p: req.top_p.unwrap_or(1.0),
            seed: req.seed.unwrap_or_else(|| now() ^ u64::from(std::process::id())),
        },
        stop: req.stop.clone(),
        probe: probe.map(|(p, trigger)| ProbePlan { suffix: p.suffix.clone(), max_tokens: p.max_tokens, trigger }),
    };
    Ok(request)
}

/// Starts the request on the engine; errors here (queue full, bad sampling values, prompt too
/// long) are answered before any stream starts.
pub fn submit(engine: &dyn Engine, req: &ClientRequest, request: Request) -> Result<RequestHandle, ApiError> {
    let input_field = match req.endpoint {
        Endpoint::Chat => "messages",
        Endpoint::Completions => "prompt",
    };
    engine.submit(request).map_err(|e| match e {
        EngineError::Busy { .. } => ApiError::busy(e.to_string()),
        EngineError::InvalidRequest(why) => {
            let param = ["temperature", "top_p", "stop"].into_iter().find(|p| why.contains(p)).unwrap_or(input_field);
            ApiError::invalid(param, why)
        }
        EngineError::PromptTooLong { .. } => {
            ApiError { code: Some("context_length_exceeded".into()), ..ApiError::invalid(input_field, e.to_string()) }
        }
        EngineError::Stopped => ApiError::unavailable(e.to_string()),
        other => ApiError::internal(other.to_string()),
    })
}

/// Turns the engine's events into pieces, building OpenAI chunks for the tokens.
pub async fn produce(mut handle: RequestHandle, endpoint: Endpoint, model: String, tx: mpsc::Sender<Piece>) {
    let head = Head { id: new_id(), created: now(), model };
    let chunk = |text: &str, first: bool| shape::chunk(endpoint, &head, Some(text), first, Value::Null).to_string();
    let first = Piece::Chunk {
        data: chunk("", true),
        text: String::new(),
        reasoning: String::new(),
        tokens: 0,
        logprob: Some(0.0),
        entropy: Some(0.0),
    };
    if tx.send(Piece::Head(head.clone())).await.is_err() || tx.send(first).await.is_err() {
        return;
    }
    while let Some(event) = handle.next().await {
        let piece = match event {
            Event::Started { prompt_tokens } => Piece::PromptTokens(prompt_tokens),
            Event::Token { text, logprob, entropy } => Piece::Chunk {
                data: chunk(&text, false),
                text,
                reasoning: String::new(),
                tokens: 1,
                logprob: Some(f64::from(logprob)),
                entropy: Some(f64::from(entropy)),
            },
            Event::Probe { after_tokens, text, tokens, mean_prob, min_prob } => Piece::Probe(ProbeOutcome {
                after_tokens,
                text,
                answer_tokens: tokens,
                mean_prob,
                min_prob,
                prompt_tokens: None,
                completion_tokens: tokens,
            }),
            Event::Done { finish_reason, .. } => Piece::Finished { finish_reason: finish_reason.as_str() },
            Event::Error(message) => Piece::Failed(ApiError::internal(format!("engine error: {message}"))),
        };
        if tx.send(piece).await.is_err() {
            return;
        }
    }
}
