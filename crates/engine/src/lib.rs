//! stopwise-engine: the engines that generate text for stopwise.
//!
//! An [`Engine`] streams the tokens of one request as [`Event`]s (each with its log-prob and the
//! entropy of the distribution it came from) and, when the request carries a [`ProbePlan`], probes
//! the answer between two tokens (every `n` generated tokens, or when the caller asks through a
//! [`ProbeRequester`]): it appends the plan's suffix, greedily decodes a short answer, reports it
//! with its token probabilities, and throws the probe away so that the generated text is exactly
//! what it would have been without probes.
//!
//! [`LlamaEngine`] is the embedded backend (llama.cpp on a GGUF file, several requests decoded in
//! one batch); [`models`] is the catalog of installable models and [`fetch`] finds or downloads them. The trait is object-safe so that an
//! HTTP upstream can implement it too.

pub mod fetch;
mod llama;
pub mod models;
pub mod record;
mod sampling;
mod text;

pub use fetch::{
    default_model_path, fetch_default_model, fetch_model, fetched_model, model_path, models_dir, resolve_model,
    stopwise_home, FetchError, PartError, Pip, Progress,
};
pub use llama::{llama_backend, EngineStats, LlamaConfig, LlamaEngine};
pub use models::{default_model, find_model, ModelSpec, Part, CATALOG, DEFAULT_MODEL};

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// One message of a chat prompt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self { role: role.into(), content: content.into() }
    }
}

/// What the model continues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prompt {
    /// Rendered with the model's chat template, ending with the opening of the assistant's turn.
    Chat(Vec<ChatMessage>),
    /// Tokenised as is (special tokens written as text are parsed), with BOS if the model wants it.
    Raw(String),
}

/// How real (non-probe) tokens are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Sampling {
    /// 0 means greedy (plain argmax of the logits).
    pub temperature: f32,
    /// Nucleus sampling: keep the most likely tokens whose probabilities add up to `top_p`; 1 keeps all.
    pub top_p: f32,
    /// Seeds the request's own RNG: the same seed gives the same output.
    pub seed: u64,
}

impl Sampling {
    /// Plain argmax decoding.
    pub const GREEDY: Sampling = Sampling { temperature: 0.0, top_p: 1.0, seed: 0 };
}

impl Default for Sampling {
    fn default() -> Self {
        Self::GREEDY
    }
}

/// When and how to probe the answer during generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbePlan {
    /// Appended after the generated text to make the model state its answer, e.g.
    /// `"\n\nFinal answer: "`. Special tokens written as text (`<|im_end|>`) are parsed.
    pub suffix: String,
    /// At most this many greedy answer tokens per probe.
    pub max_tokens: u32,
    pub trigger: ProbeTrigger,
}

/// When a request is probed. Either way a probe is skipped where it would not fit in the context.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeTrigger {
    /// After every `n` generated tokens (recording full traces).
    Every(u32),
    /// Only where asked through the handle's [`ProbeRequester`], so that a caller whose stop rule
    /// needs few answers pays for no others.
    OnRequest,
}

/// One generation request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub prompt: Prompt,
    /// Generated tokens at most (the end-of-generation token counts as one).
    pub max_tokens: u32,
    pub sampling: Sampling,
    /// Generation stops when the text ends with one of these; the stop string is not emitted.
    pub stop: Vec<String>,
    pub probe: Option<ProbePlan>,
}

impl Request {
    /// Checks what every backend needs from a request, so bad input is an error and never a panic.
    pub fn validate(&self) -> Result<(), EngineError> {
        let invalid = |why: &str| Err(EngineError::InvalidRequest(why.to_string()));
        let Sampling { temperature, top_p, .. } = self.sampling;
        if !(temperature.is_finite() && temperature >= 0.0) {
            return invalid("temperature must be a finite number >= 0 (0 means greedy)");
        }
        if !(top_p > 0.0 && top_p <= 1.0) {
            return invalid("top_p must be in (0, 1]");
        }
        if self.stop.iter().any(String::is_empty) {
            return invalid("stop strings must not be empty");
        }
        if let Some(plan) = &self.probe {
            if plan.suffix.is_empty() {
                return invalid("probe suffix must not be empty");
            }
            if plan.max_tokens == 0 || plan.trigger == ProbeTrigger::Every(0) {
                return invalid("probe max_tokens and interval must be at least 1");
            }
        }
        Ok(())
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// The model ended its turn (end-of-generation token) or a stop string appeared.
    Stop,
    /// `max_tokens` reached or the context is full.
    Length,
}

impl FinishReason {
    /// The OpenAI API's name for it, which traces use too.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// What a request reports, in order: `Started`, then `Token`s and `Probe`s, then `Done` or `Error`.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Started {
        prompt_tokens: u32,
    },
    /// One generated token, the final end-of-generation token included (its text is empty, except
    /// that it releases text held back because it might have begun a stop string). `text` is always
    /// valid UTF-8: bytes of a character split across tokens arrive with the token that completes
    /// it, so concatenating every `text` gives the detokenised output.
    Token {
        text: String,
        /// Log-probability of this token under the model's unmodified (temperature 1) distribution.
        logprob: f32,
        /// Entropy in nats of that distribution.
        entropy: f32,
    },
    /// The answer probed after `after_tokens` generated tokens.
    Probe {
        after_tokens: u32,
        /// Greedy answer, up to the end of its first non-blank line.
        text: String,
        /// Number of greedy tokens that make up `text`.
        tokens: u32,
        /// Mean and minimum probability (temperature 1) of those tokens; 0 when there are none.
        mean_prob: f32,
        min_prob: f32,
    },
    Done {
        finish_reason: FinishReason,
        /// Number of `Token` events sent.
        completion_tokens: u32,
    },
    /// The request failed; no other event follows.
    Error(String),
}

/// Why a request could not be started, or an engine not loaded.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("engine busy: {queue_limit} requests already waiting; retry later")]
    Busy { queue_limit: usize },
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("prompt has {prompt_tokens} tokens but a sequence holds at most {limit}; shorten the prompt or raise the context size")]
    PromptTooLong { prompt_tokens: usize, limit: usize },
    #[error("cannot load the engine: {0}")]
    Load(String),
    #[error("the engine has stopped (its worker exited); restart it")]
    Stopped,
    #[error(transparent)]
    Fetch(#[from] FetchError),
}

/// A text-generation backend. Object-safe: servers hold it as `Arc<dyn Engine>`.
pub trait Engine: Send + Sync {
    /// Name to record in traces, e.g. `SmolLM2-135M-Instruct.Q4_1`.
    fn model_name(&self) -> &str;
    /// Starts a request; events arrive on the returned handle. Dropping the handle cancels the
    /// request and frees its sequence.
    fn submit(&self, request: Request) -> Result<RequestHandle, EngineError>;
    /// Current load (waiting and running requests, cancellations so far), for metrics.
    fn stats(&self) -> EngineStats;
}

/// The receiving end of one request's events.
#[derive(Debug)]
pub struct RequestHandle {
    // Unbounded on purpose: the engine's single decode loop must never block on one slow
    // reader, and a request cannot produce more than about 2 × max_tokens events anyway.
    receiver: mpsc::UnboundedReceiver<Event>,
    probes: ProbeRequester,
}

/// Asks a running [`ProbeTrigger::OnRequest`] request for probes. Cheap to clone, callable from
/// any thread, never blocks: whoever decides on probes need not be whoever reads the events.
#[derive(Debug, Clone)]
pub struct ProbeRequester {
    /// The latest generated-token count a probe was asked for; 0 when none was.
    wanted: Arc<AtomicU32>,
}

impl ProbeRequester {
    /// Asks for one probe at the first token boundary with at least `after_tokens` (at least 1)
    /// generated tokens, which is the next boundary when the engine is already past that point.
    /// A probe taken at or after the point answers the request, so asking again for the same or
    /// an earlier point asks for nothing more. A probe that can no longer fit in the context is
    /// never taken; the request goes on without it.
    pub fn request(&self, after_tokens: u32) {
        // Only the number is shared, nothing it guards, so no ordering is needed.
        self.wanted.fetch_max(after_tokens.max(1), Ordering::Relaxed);
    }

    /// The latest point a probe was asked for.
    fn wanted(&self) -> Option<u32> {
        Some(self.wanted.load(Ordering::Relaxed)).filter(|&at| at > 0)
    }
}

/// The sending end of one request's events, held by the engine.
#[derive(Debug, Clone)]
pub struct EventSender {
    sender: mpsc::UnboundedSender<Event>,
    probes: ProbeRequester,
}

impl EventSender {
    /// Sends an event; `false` means the handle was dropped and the request should be cancelled.
    pub fn send(&self, event: Event) -> bool {
        self.sender.send(event).is_ok()
    }

    /// Whether the handle was dropped.
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    /// The latest point (generated tokens) a probe was asked for through [`ProbeRequester::request`].
    pub fn probe_wanted_at(&self) -> Option<u32> {
        self.probes.wanted()
    }
}

impl RequestHandle {
    /// A connected sender/handle pair, for backends.
    pub fn channel() -> (EventSender, RequestHandle) {
        let (sender, receiver) = mpsc::unbounded_channel();
        let probes = ProbeRequester { wanted: Arc::default() };
        (EventSender { sender, probes: probes.clone() }, RequestHandle { receiver, probes })
    }

    /// Asks this request for probes; see [`ProbeTrigger::OnRequest`].
    pub fn probe_requester(&self) -> ProbeRequester {
        self.probes.clone()
    }

    /// Next event, or `None` once the request is over.
    pub async fn next(&mut self) -> Option<Event> {
        self.receiver.recv().await
    }

    /// Next event from synchronous code. Must not be called from inside an async runtime.
    pub fn next_blocking(&mut self) -> Option<Event> {
        self.receiver.blocking_recv()
    }
}
