//! The two OpenAI response shapes stopwise serves: chat completions (`delta.content`, with
//! `delta.reasoning_content` from reasoning models) and legacy text completions (`text`). Used
//! for stopwise's own chunks (the embedded engine's tokens, the forced answer, the last chunk)
//! and to fold a stream into one response for a client that did not ask to stream.

use serde_json::{json, Value};

use crate::error::ApiError;
use crate::request::Endpoint;
use crate::sse::Frame;

/// The identity every chunk of one response shares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub id: String,
    pub created: u64,
    pub model: String,
}

/// A streamed chunk adding `text` (`None`: an empty delta, as in a last chunk). `first` adds the
/// chat role, as OpenAI's first chunk carries it.
pub fn chunk(endpoint: Endpoint, head: &Head, text: Option<&str>, first: bool, finish_reason: Value) -> Value {
    let choice = match endpoint {
        Endpoint::Chat => {
            let mut delta = json!({});
            if first {
                delta["role"] = json!("assistant");
            }
            if let Some(text) = text {
                delta["content"] = json!(text);
            }
            json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason})
        }
        Endpoint::Completions => {
            json!({"index": 0, "text": text.unwrap_or_default(), "logprobs": null, "finish_reason": finish_reason})
        }
    };
    let object = match endpoint {
        Endpoint::Chat => "chat.completion.chunk",
        Endpoint::Completions => "text_completion",
    };
    json!({"id": head.id, "object": object, "created": head.created, "model": head.model, "choices": [choice]})
}

/// What one upstream chunk adds: its answer text and its reasoning text. vLLM before 0.11 and
/// SGLang name the reasoning `reasoning_content`; vLLM 0.11 and later name it `reasoning`.
pub fn delta_text(chunk: &Value) -> (String, String) {
    let choice = &chunk["choices"][0];
    let field = |value: &Value| value.as_str().unwrap_or_default().to_owned();
    let delta = &choice["delta"];
    let reasoning = match delta["reasoning_content"].as_str() {
        Some(text) => text.to_owned(),
        None => field(&delta["reasoning"]),
    };
    let content = match delta["content"].as_str() {
        Some(text) => text.to_owned(),
        None => field(&choice["text"]),
    };
    (content, reasoning)
}

/// Folds streamed frames into the one response object of a client that did not stream.
#[derive(Debug)]
pub struct Fold {
    endpoint: Endpoint,
    content: String,
    reasoning: String,
    last: Value,
    finish_reason: Value,
    usage: Value,
    extension: Value,
}

impl Fold {
    pub fn new(endpoint: Endpoint) -> Self {
        Fold {
            endpoint,
            content: String::new(),
            reasoning: String::new(),
            last: Value::Null,
            finish_reason: Value::Null,
            usage: Value::Null,
            extension: Value::Null,
        }
    }

    /// Takes one data frame's JSON text.
    pub fn add(&mut self, data: &str) -> Result<(), ApiError> {
        let chunk: Value = serde_json::from_str(data)
            .map_err(|e| ApiError::upstream(format!("the upstream sent a chunk that is not JSON: {e}")))?;
        let (content, reasoning) = delta_text(&chunk);
        self.content.push_str(&content);
        self.reasoning.push_str(&reasoning);
        for (slot, value) in [
            (&mut self.finish_reason, &chunk["choices"][0]["finish_reason"]),
            (&mut self.usage, &chunk["usage"]),
            (&mut self.extension, &chunk["stopwise"]),
        ] {
            if !value.is_null() {
                *slot = value.clone();
            }
        }
        // A usage-only chunk (no choices) still has the response's identity.
        self.last = chunk;
        Ok(())
    }

    pub fn finish(self) -> Value {
        let choice = match self.endpoint {
            Endpoint::Chat => {
                let mut message = json!({"role": "assistant", "content": self.content});
                if !self.reasoning.is_empty() {
                    message["reasoning_content"] = json!(self.reasoning);
                }
                json!({"index": 0, "message": message, "logprobs": null, "finish_reason": self.finish_reason})
            }
            Endpoint::Completions => {
                json!({"index": 0, "text": self.content, "logprobs": null, "finish_reason": self.finish_reason})
            }
        };
        let object = match self.endpoint {
            Endpoint::Chat => "chat.completion",
            Endpoint::Completions => "text_completion",
        };
        let last = &self.last;
        let mut response = json!({
            "id": last["id"], "object": object, "created": last["created"], "model": last["model"],
            "choices": [choice], "usage": self.usage,
        });
        if !self.extension.is_null() {
            response["stopwise"] = self.extension;
        }
        response
    }
}

/// Reads frames until `[DONE]` (or an error) and folds them.
pub async fn collect(
    endpoint: Endpoint,
    first: Frame,
    out: &mut tokio::sync::mpsc::Receiver<Frame>,
) -> Result<Value, ApiError> {
    let mut fold = Fold::new(endpoint);
    let mut next = Some(first);
    loop {
        let frame = match next.take() {
            Some(frame) => frame,
            None => out.recv().await.ok_or_else(|| ApiError::internal("the stream ended without [DONE]"))?,
        };
        match frame {
            Frame::Data(data) => fold.add(&data)?,
            Frame::Error(e) => return Err(e),
            Frame::Done => return Ok(fold.finish()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head() -> Head {
        Head { id: "x".into(), created: 1, model: "m".into() }
    }

    #[test]
    fn chat_and_completion_chunks_fold_back_into_their_responses() {
        for endpoint in [Endpoint::Chat, Endpoint::Completions] {
            let mut fold = Fold::new(endpoint);
            fold.add(&chunk(endpoint, &head(), Some(""), true, Value::Null).to_string()).unwrap();
            fold.add(&chunk(endpoint, &head(), Some("4"), false, Value::Null).to_string()).unwrap();
            let mut last = chunk(endpoint, &head(), None, false, json!("stop"));
            last["usage"] = json!({"completion_tokens": 1});
            fold.add(&last.to_string()).unwrap();
            let response = fold.finish();
            let text = match endpoint {
                Endpoint::Chat => &response["choices"][0]["message"]["content"],
                Endpoint::Completions => &response["choices"][0]["text"],
            };
            assert_eq!((text, &response["choices"][0]["finish_reason"]), (&json!("4"), &json!("stop")));
            assert_eq!((&response["id"], &response["usage"]["completion_tokens"]), (&json!("x"), &json!(1)));
        }
    }

    #[test]
    fn reasoning_is_read_under_both_names() {
        // vLLM < 0.11 and SGLang: `reasoning_content`; vLLM >= 0.11: `reasoning`.
        let old = json!({"choices": [{"delta": {"reasoning_content": "hmm"}}]});
        let new = json!({"choices": [{"delta": {"reasoning": "hmm", "content": null}}]});
        assert_eq!(delta_text(&old), (String::new(), "hmm".into()));
        assert_eq!(delta_text(&new), (String::new(), "hmm".into()));
        let mut fold = Fold::new(Endpoint::Chat);
        fold.add(&new.to_string()).unwrap();
        fold.add(&json!({"choices": [{"delta": {"content": "4"}}]}).to_string()).unwrap();
        let message = &fold.finish()["choices"][0]["message"];
        assert_eq!((&message["reasoning_content"], &message["content"]), (&json!("hmm"), &json!("4")));
    }
}
