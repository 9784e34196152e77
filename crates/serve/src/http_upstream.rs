//! An OpenAI-compatible server as the upstream: its SSE stream relayed chunk by chunk, and probes
//! sent as second, short requests on the same prefix.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use crate::config::ProbeMode;
use crate::error::ApiError;
use crate::session::{Head, Piece, ProbeFuture, ProbeOutcome, Prober};
use crate::shape::delta_text;
use crate::sse::SseParser;

/// The bounds on reading one upstream reply (a route's settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest silence between two reads.
    pub idle_timeout: Duration,
    /// Longest SSE line or event.
    pub max_event_bytes: usize,
    /// Largest non-streamed body.
    pub max_response_bytes: usize,
}

/// What stopwise asked of the upstream that the client did not, to be read and then taken out of
/// what the client receives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Added {
    /// `logprobs: true`, for a rule that reads token log-probs.
    pub logprobs: bool,
    /// `stream_options.continuous_usage_stats` (vLLM): exact token counts in every chunk, which
    /// stopwise counts by (whoever asked for them).
    pub counts_from_usage: bool,
    /// The client did not ask for those running counts.
    pub running_usage: bool,
    /// `stream_options.include_usage`: the last chunk with the usage and no choices.
    pub final_usage: bool,
}

/// Most bytes of an upstream's error body that are read: enough for any OpenAI-shaped error, and
/// an endless one cannot fill memory.
pub const ERROR_BODY_LIMIT: usize = 64 << 10;

/// Why an upstream body could not be read whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("sent nothing for {0} ms (the route's idle_timeout_ms)")]
    Silent(u128),
    #[error("sent a body of more than {0} bytes (the route's max_response_bytes)")]
    TooLarge(usize),
    #[error("broke off the body: {0}")]
    Broken(String),
}

/// Reads a whole response body, refusing one longer than `limit` and giving up when the upstream is
/// silent for `idle` between two reads: no upstream reply is waited for or buffered without bound.
pub async fn read_body(response: reqwest::Response, idle: Duration, limit: usize) -> Result<Vec<u8>, BodyError> {
    let mut body = Vec::new();
    let mut bytes = response.bytes_stream();
    loop {
        let part = tokio::time::timeout(idle, bytes.next()).await.map_err(|_| BodyError::Silent(idle.as_millis()))?;
        let Some(part) = part else { return Ok(body) };
        let part = part.map_err(|e| BodyError::Broken(e.to_string()))?;
        if body.len() + part.len() > limit {
            return Err(BodyError::TooLarge(limit));
        }
        body.extend_from_slice(&part);
    }
}

/// The start of an error response's body, for the error the client gets: whatever arrived within
/// [`ERROR_BODY_LIMIT`] bytes and before a silence of `idle` (then the connection is dropped).
pub async fn error_text(response: reqwest::Response, idle: Duration) -> String {
    let mut body = Vec::new();
    let mut bytes = response.bytes_stream();
    while body.len() < ERROR_BODY_LIMIT {
        match tokio::time::timeout(idle, bytes.next()).await {
            Ok(Some(Ok(part))) => body.extend_from_slice(&part[..part.len().min(ERROR_BODY_LIMIT - body.len())]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&body).into_owned()
}

/// POSTs `body` to `url` (an upstream's chat or completions endpoint) and reports the streamed
/// chunks as pieces.
pub async fn stream(
    client: reqwest::Client,
    url: String,
    body: Map<String, Value>,
    added: Added,
    limits: Limits,
    tx: mpsc::Sender<Piece>,
) {
    let failed = match stream_inner(&client, &url, &body, added, limits, &tx).await {
        Ok(()) => return,
        Err(e) => e,
    };
    // The session may be gone already; nobody is left to tell then.
    let _ = tx.send(Piece::Failed(failed)).await;
}

async fn stream_inner(
    client: &reqwest::Client,
    url: &str,
    body: &Map<String, Value>,
    added: Added,
    limits: Limits,
    tx: &mpsc::Sender<Piece>,
) -> Result<(), ApiError> {
    let idle_timeout = limits.idle_timeout;
    let silent = || {
        let ms = idle_timeout.as_millis();
        ApiError::upstream_timeout(format!("{url} sent nothing for {ms} ms (the route's idle_timeout_ms)"))
    };
    let response = tokio::time::timeout(idle_timeout, client.post(url).json(body).send())
        .await
        .map_err(|_| silent())?
        .map_err(|e| ApiError::upstream(format!("{url}: {e}")))?;
    let status = response.status();
    if !status.is_success() {
        return Err(ApiError::from_upstream(status.as_u16(), &error_text(response, idle_timeout).await));
    }
    let mut parser = SseParser::new(limits.max_event_bytes);
    let mut bytes = response.bytes_stream();
    let mut head_sent = false;
    // Completion tokens counted so far, when the upstream reports them running.
    let mut counted = 0;
    while let Some(part) = tokio::time::timeout(idle_timeout, bytes.next()).await.map_err(|_| silent())? {
        let part = part.map_err(|e| ApiError::upstream(format!("the upstream broke off the stream: {e}")))?;
        for event in parser.push(&part).map_err(|e| ApiError::upstream(e.to_string()))? {
            if event.data == "[DONE]" {
                let _ = tx.send(Piece::Done).await;
                return Ok(());
            }
            let chunk: Value = serde_json::from_str(&event.data)
                .map_err(|e| ApiError::upstream(format!("the upstream sent a chunk that is not JSON: {e}")))?;
            if chunk.get("error").is_some() || event.event.as_deref() == Some("error") {
                return Err(ApiError::from_upstream(502, &event.data));
            }
            if !head_sent {
                head_sent = true;
                let head = Head {
                    id: chunk["id"].as_str().unwrap_or_default().to_owned(),
                    created: chunk["created"].as_u64().unwrap_or_else(crate::session::now),
                    model: chunk["model"].as_str().unwrap_or_default().to_owned(),
                };
                if tx.send(Piece::Head(head)).await.is_err() {
                    return Ok(());
                }
            }
            if let Some(n) = chunk["usage"]["prompt_tokens"].as_u64() {
                let _ = tx.send(Piece::PromptTokens(n as u32)).await;
            }
            let usage_only = chunk["choices"].as_array().is_some_and(Vec::is_empty);
            if usage_only && added.final_usage {
                continue;
            }
            let mut piece = chunk_piece(&chunk, event.data);
            if let Piece::Chunk { data, tokens, .. } = &mut piece {
                let running =
                    chunk["usage"]["completion_tokens"].as_u64().filter(|_| added.counts_from_usage && !usage_only);
                if let Some(total) = running {
                    // Exact, even when a chunk carries several tokens.
                    *tokens = (total as u32).saturating_sub(counted);
                    counted = total as u32;
                }
                if added != Added::default() {
                    *data = without_added(chunk, added).to_string();
                }
            }
            if tx.send(piece).await.is_err() {
                return Ok(());
            }
        }
    }
    Err(ApiError::upstream("the upstream closed the stream before `data: [DONE]`"))
}

/// The chunk as the client would have received it without stopwise's additions.
fn without_added(mut chunk: Value, added: Added) -> Value {
    if added.logprobs {
        if let Some(choices) = chunk["choices"].as_array_mut() {
            choices.iter_mut().for_each(|c| c["logprobs"] = Value::Null);
        }
    }
    // The usage-only last chunk keeps its usage: the client asked for it (or it was dropped).
    if added.running_usage && !chunk["choices"].as_array().is_some_and(Vec::is_empty) {
        if let Some(object) = chunk.as_object_mut() {
            object.remove("usage");
        }
    }
    chunk
}

/// What one upstream chunk adds. A chunk with text counts as one token unless it carries
/// per-token log-probs (servers stream one token per chunk; vLLM may merge several, and then
/// lists their log-probs when asked): chat's `logprobs.content[].logprob`, or legacy
/// completions' `logprobs.token_logprobs[]`.
fn chunk_piece(chunk: &Value, data: String) -> Piece {
    let (text, reasoning) = delta_text(chunk);
    let logprobs = &chunk["choices"][0]["logprobs"];
    let logprobs: Option<Vec<f64>> = match logprobs["content"].as_array() {
        Some(list) => Some(list.iter().filter_map(|t| t["logprob"].as_f64()).collect()),
        None => logprobs["token_logprobs"].as_array().map(|list| list.iter().filter_map(Value::as_f64).collect()),
    };
    let tokens = match &logprobs {
        Some(list) if !list.is_empty() => list.len() as u32,
        _ => u32::from(!text.is_empty() || !reasoning.is_empty()),
    };
    let logprob = logprobs.map(|list| list.iter().sum());
    Piece::Chunk { data, text, reasoning, tokens, logprob, entropy: None }
}

/// Largest probe answer read: a few tokens with their log-probs take a few kilobytes.
const PROBE_RESPONSE_LIMIT: usize = 1 << 20;

/// What a probe continues: the request's conversation, or its raw prompt.
#[derive(Debug, Clone)]
pub enum ProbeInput {
    Messages(Arc<Vec<Value>>),
    Prompt(Arc<String>),
}

/// Probes through an HTTP upstream, with the conversation of one request.
pub struct HttpProber {
    pub client: reqwest::Client,
    pub base: String,
    pub mode: ProbeMode,
    pub model: Value,
    pub input: ProbeInput,
    pub suffix: String,
    pub max_tokens: u32,
    pub timeout: Duration,
    pub default_system: Option<String>,
}

impl Prober for HttpProber {
    fn probe(&self, partial: String, after_tokens: u32) -> ProbeFuture {
        let (url, body) = match (&self.input, self.mode) {
            (ProbeInput::Messages(messages), ProbeMode::ContinueFinalMessage) => {
                let mut messages = (**messages).clone();
                messages.push(json!({"role": "assistant", "content": format!("{partial}{}", self.suffix)}));
                let body = json!({
                    "model": self.model, "messages": messages, "max_tokens": self.max_tokens,
                    "temperature": 0, "logprobs": true, "stream": false,
                    "continue_final_message": true, "add_generation_prompt": false,
                });
                (format!("{}/chat/completions", self.base), body)
            }
            // A raw prompt is simply continued; a conversation is rendered as ChatML.
            (input, _) => {
                let prompt = match input {
                    ProbeInput::Prompt(prompt) => format!("{prompt}{partial}{}", self.suffix),
                    ProbeInput::Messages(messages) => {
                        chatml(messages, self.default_system.as_deref(), &partial, &self.suffix)
                    }
                };
                let body = json!({
                    "model": self.model, "prompt": prompt, "max_tokens": self.max_tokens,
                    "temperature": 0, "logprobs": 1, "stream": false,
                });
                (format!("{}/completions", self.base), body)
            }
        };
        let request = self.client.post(url).timeout(self.timeout).json(&body);
        let timeout = self.timeout;
        Box::pin(async move {
            let response = request.send().await.map_err(|e| e.to_string())?;
            let status = response.status();
            // The body is neither kept nor logged when the probe failed: upstreams echo prompts in
            // their errors, and these messages end up in the server's log.
            if !status.is_success() {
                return Err(format!("probe answered {status}"));
            }
            let body = read_body(response, timeout, PROBE_RESPONSE_LIMIT).await.map_err(|e| format!("probe {e}"))?;
            let value: Value = serde_json::from_slice(&body).map_err(|e| format!("probe answer is not JSON: {e}"))?;
            Ok(probe_outcome(&value, after_tokens))
        })
    }
}

/// The conversation as ChatML, the assistant's turn left open after `partial` and the suffix.
fn chatml(messages: &[Value], default_system: Option<&str>, partial: &str, suffix: &str) -> String {
    let mut prompt = String::new();
    let has_system = messages.first().is_some_and(|m| m["role"] == "system");
    if let (false, Some(system)) = (has_system, default_system) {
        prompt.push_str(&format!("<|im_start|>system\n{system}<|im_end|>\n"));
    }
    for m in messages {
        let role = m["role"].as_str().unwrap_or("user");
        let content = m["content"].as_str().unwrap_or_default();
        prompt.push_str(&format!("<|im_start|>{role}\n{content}<|im_end|>\n"));
    }
    prompt.push_str(&format!("<|im_start|>assistant\n{partial}{suffix}"));
    prompt
}

/// Reads a chat or completions response: the first non-blank line of the answer (as the
/// embedded engine reports it), its token probabilities when the upstream returned log-probs,
/// and the probe's usage.
fn probe_outcome(value: &Value, after_tokens: u32) -> ProbeOutcome {
    let choice = &value["choices"][0];
    let text = choice["message"]["content"].as_str().or_else(|| choice["text"].as_str()).unwrap_or_default();
    let logprobs: Vec<f64> = match choice["logprobs"]["content"].as_array() {
        Some(chat) => chat.iter().filter_map(|t| t["logprob"].as_f64()).collect(),
        None => choice["logprobs"]["token_logprobs"]
            .as_array()
            .map(|l| l.iter().filter_map(Value::as_f64).collect())
            .unwrap_or_default(),
    };
    let line = text.trim_start().lines().next().unwrap_or_default().trim_end().to_owned();
    let completion_tokens = value["usage"]["completion_tokens"].as_u64().map_or(logprobs.len() as u32, |n| n as u32);
    // Without log-probs the probe's confidence is unknown and must read as none at all.
    let probs: Vec<f64> = logprobs.iter().map(|lp| lp.exp()).collect();
    let (mean_prob, min_prob) = if probs.is_empty() {
        (0.0, 0.0)
    } else {
        (probs.iter().sum::<f64>() / probs.len() as f64, probs.iter().copied().fold(1.0, f64::min))
    };
    ProbeOutcome {
        after_tokens,
        text: line,
        answer_tokens: completion_tokens,
        mean_prob: mean_prob as f32,
        min_prob: min_prob as f32,
        prompt_tokens: value["usage"]["prompt_tokens"].as_u64().map(|n| n as u32),
        completion_tokens,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_leaves_the_assistant_turn_open() {
        let messages = vec![json!({"role": "user", "content": "2+2?"})];
        assert_eq!(
            chatml(&messages, Some("Be brief."), "It is 4.", "\nFinal answer: "),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\nIt is 4.\nFinal answer: "
        );
    }

    #[test]
    fn reads_chat_and_completions_probe_responses() {
        // Shapes: OpenAI chat completion with `logprobs.content[]`, and legacy completions with
        // `logprobs.token_logprobs` (as llama-cpp-python returns them).
        let chat = json!({"choices":[{"message":{"content":" 18\nbecause"},"logprobs":{"content":[{"logprob":0.0},{"logprob":-0.5}]}}],
            "usage":{"prompt_tokens":40,"completion_tokens":2}});
        let outcome = probe_outcome(&chat, 64);
        assert_eq!((outcome.text.as_str(), outcome.after_tokens, outcome.prompt_tokens), ("18", 64, Some(40)));
        // exp(-0.5) = 0.6065
        assert!((outcome.mean_prob - 0.8033).abs() < 1e-3 && (outcome.min_prob - 0.6065).abs() < 1e-3);
        let completion = json!({"choices":[{"text":"\n\nParis","logprobs":{"token_logprobs":[-0.1]}}]});
        let outcome = probe_outcome(&completion, 32);
        assert_eq!((outcome.text.as_str(), outcome.completion_tokens, outcome.prompt_tokens), ("Paris", 1, None));
        let bare = probe_outcome(&json!({"choices":[{"text":"7"}]}), 32);
        assert_eq!((bare.mean_prob, bare.min_prob), (0.0, 0.0));
    }
}
