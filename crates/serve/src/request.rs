//! The client's request to `/v1/chat/completions` or `/v1/completions`: checked field by field (so
//! a bad one gets a 400 naming the field), while the raw JSON object is kept whole so that every
//! parameter reaches the upstream.

use serde::Deserialize;
use serde_json::{Map, Value};
use stopwise_core::rules::PolicySpec;
use stopwise_engine::ChatMessage;

use crate::error::ApiError;

/// Which OpenAI endpoint, and so which response shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completions,
}

impl Endpoint {
    /// The path under an upstream's base URL.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Chat => "chat/completions",
            Endpoint::Completions => "completions",
        }
    }
}

/// What the model continues: a conversation, or a raw prompt.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    Messages(Vec<ChatMessage>),
    Prompt(String),
    /// Several prompts, or token arrays: passed to an HTTP upstream as they are when stopping is
    /// off, refused otherwise (stopping follows one text).
    Batch,
}

/// The request, as the upstream will see it (the `stopwise` extension removed), plus the fields
/// stopwise itself reads.
#[derive(Debug, Clone)]
pub struct ClientRequest {
    pub raw: Map<String, Value>,
    pub endpoint: Endpoint,
    pub model: String,
    pub input: Input,
    pub stream: bool,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    /// Choices asked for; stopping (and the embedded engine) handle one.
    pub n: u32,
    pub extension: Extension,
}

/// `"stopwise": {"policy": ..., "disable": true}`: per-request override, never sent upstream.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Extension {
    pub policy: Option<PolicySpec>,
    pub disable: bool,
}

/// `max_tokens` of a `/v1/completions` request that sets none (OpenAI's documented default).
pub const LEGACY_COMPLETIONS_MAX_TOKENS: u32 = 16;

#[derive(Deserialize)]
struct Fields {
    model: String,
    messages: Option<Vec<Message>>,
    prompt: Option<PromptField>,
    #[serde(default)]
    stream: Option<bool>,
    max_tokens: Option<u32>,
    max_completion_tokens: Option<u32>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    seed: Option<u64>,
    stop: Option<Stop>,
    n: Option<u32>,
    stopwise: Option<ExtensionFields>,
}

#[derive(Deserialize)]
struct Message {
    role: String,
    /// `null` is allowed (assistant messages that only call tools).
    content: Option<Content>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Deserialize)]
struct Part {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

/// OpenAI also takes a list of prompts and token arrays; one text prompt is what stopping (and the
/// embedded engine) can follow, the rest is passed through.
#[derive(Deserialize)]
#[serde(untagged)]
enum PromptField {
    Text(String),
    Many(Vec<Value>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExtensionFields {
    policy: Option<Value>,
    #[serde(default)]
    disable: bool,
}

impl ClientRequest {
    pub fn parse(endpoint: Endpoint, body: &[u8]) -> Result<Self, ApiError> {
        let value: Value =
            serde_json::from_slice(body).map_err(|e| ApiError::bad_json(format!("request body is not JSON: {e}")))?;
        let Value::Object(mut raw) = value else {
            return Err(ApiError::bad_json("request body must be a JSON object"));
        };
        let fields: Fields = serde_path_to_error::deserialize(&Value::Object(raw.clone())).map_err(field_error)?;
        let input = match endpoint {
            Endpoint::Chat => {
                let messages = fields
                    .messages
                    .ok_or_else(|| ApiError::invalid("messages", "field `messages`: missing field `messages`"))?
                    .into_iter()
                    .enumerate()
                    .map(|(i, m)| Ok(ChatMessage::new(m.role, text_of(i, m.content)?)))
                    .collect::<Result<Vec<_>, ApiError>>()?;
                if messages.is_empty() {
                    return Err(ApiError::invalid("messages", "must hold at least one message"));
                }
                Input::Messages(messages)
            }
            Endpoint::Completions => match fields.prompt {
                None => return Err(ApiError::invalid("prompt", "field `prompt`: missing field `prompt`")),
                Some(PromptField::Text(text)) => Input::Prompt(text),
                Some(PromptField::Many(mut items)) => match (items.len(), items.pop()) {
                    (0, _) => return Err(ApiError::invalid("prompt", "must hold at least one prompt")),
                    (1, Some(Value::String(text))) => Input::Prompt(text),
                    _ => Input::Batch,
                },
            },
        };
        raw.remove("stopwise");
        let extension = match fields.stopwise {
            None => Extension::default(),
            Some(ext) => Extension { policy: ext.policy.map(parse_policy).transpose()?, disable: ext.disable },
        };
        Ok(ClientRequest {
            raw,
            endpoint,
            model: fields.model,
            input,
            stream: fields.stream.unwrap_or(false),
            // OpenAI's legacy completions stop at 16 tokens when the client sets no limit.
            max_tokens: fields
                .max_completion_tokens
                .or(fields.max_tokens)
                .or((endpoint == Endpoint::Completions).then_some(LEGACY_COMPLETIONS_MAX_TOKENS)),
            temperature: fields.temperature,
            top_p: fields.top_p,
            seed: fields.seed,
            stop: match fields.stop {
                None => Vec::new(),
                Some(Stop::One(s)) => vec![s],
                Some(Stop::Many(v)) => v,
            },
            n: fields.n.unwrap_or(1),
            extension,
        })
    }
}

/// serde reports a missing field at its parent's path; the param should name the field itself.
fn field_error(e: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = e.path().to_string();
    let message = e.inner().to_string();
    let missing = message.strip_prefix("missing field `").and_then(|rest| rest.split('`').next());
    let param = match (missing, path.as_str()) {
        (Some(field), "." | "") => field.to_owned(),
        (Some(field), parent) => format!("{parent}.{field}"),
        (None, path) => path.to_owned(),
    };
    ApiError::invalid(param.clone(), format!("field `{param}`: {message}"))
}

fn text_of(i: usize, content: Option<Content>) -> Result<String, ApiError> {
    match content {
        None => Ok(String::new()),
        Some(Content::Text(text)) => Ok(text),
        Some(Content::Parts(parts)) => parts
            .into_iter()
            .map(|p| match (p.kind.as_str(), p.text) {
                ("text", Some(text)) => Ok(text),
                (kind, _) => Err(ApiError::invalid(
                    format!("messages[{i}].content"),
                    format!("content parts of type `{kind}` are not supported; send text"),
                )),
            })
            .collect(),
    }
}

fn parse_policy(value: Value) -> Result<PolicySpec, ApiError> {
    let text = match value {
        Value::String(text) => text,
        other => other.to_string(),
    };
    // A certificate object works as well as a policy: clients may pass what `calibrate` wrote. No
    // file may be named: what the server reads is for its operator to decide.
    PolicySpec::parse(&text).map_err(|e| ApiError::invalid("stopwise.policy", e.to_string()))
}

#[cfg(test)]
mod tests {
    use stopwise_core::rules::budget::Budget;

    use super::*;

    #[test]
    fn keeps_every_parameter_but_the_extension() {
        let body = br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"logit_bias":{"1":2},
            "stream":true,"stop":"x","stopwise":{"policy":{"type":"budget","max_tokens":8}}}"#;
        let req = ClientRequest::parse(Endpoint::Chat, body).unwrap();
        assert!(req.raw.contains_key("logit_bias") && !req.raw.contains_key("stopwise"));
        assert_eq!(req.stop, vec!["x".to_owned()]);
        assert_eq!(req.extension.policy, Some(Budget { max_tokens: 8 }.into()));
        assert!(req.stream);
    }

    #[test]
    fn errors_name_the_field() {
        let param = |body: &[u8]| ClientRequest::parse(Endpoint::Chat, body).unwrap_err().param;
        assert_eq!(param(br#"{"messages":[]}"#).as_deref(), Some("model"));
        assert_eq!(param(br#"{"model":"m","messages":[{"content":"x"}]}"#).as_deref(), Some("messages[0].role"));
        assert_eq!(
            param(br#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":"9"}"#).as_deref(),
            Some("max_tokens")
        );
        assert_eq!(
            param(br#"{"model":"m","messages":[{"role":"user","content":"x"}],"stopwise":{"policy":"nope"}}"#)
                .as_deref(),
            Some("stopwise.policy")
        );
        let err = ClientRequest::parse(Endpoint::Chat, b"{not json").unwrap_err();
        assert_eq!((err.status.as_u16(), err.param), (400, None));
    }

    #[test]
    fn a_request_may_not_name_files() {
        for policy in [
            r#"{"type":"learned","model":"stopper.json","threshold":0.5}"#,
            r#""type = \"learned\", model = \"/etc/stopper.json\", threshold = 0.5""#,
        ] {
            let body = format!(
                r#"{{"model":"m","messages":[{{"role":"user","content":"x"}}],"stopwise":{{"policy":{policy}}}}}"#
            );
            let err = ClientRequest::parse(Endpoint::Chat, body.as_bytes()).unwrap_err();
            assert_eq!((err.status.as_u16(), err.param.as_deref()), (400, Some("stopwise.policy")));
            assert!(err.message.contains("may not name files"), "{}", err.message);
        }
        // Nor is a policy text looked up as a path on the server.
        let body = br#"{"model":"m","messages":[{"role":"user","content":"x"}],"stopwise":{"policy":"/etc/passwd"}}"#;
        let err = ClientRequest::parse(Endpoint::Chat, body).unwrap_err();
        assert_eq!((err.status.as_u16(), err.param.as_deref()), (400, Some("stopwise.policy")));
        // `never` is a bare name here too.
        let body = br#"{"model":"m","messages":[{"role":"user","content":"x"}],"stopwise":{"policy":"never"}}"#;
        assert_eq!(ClientRequest::parse(Endpoint::Chat, body).unwrap().extension.policy, Some(PolicySpec::NEVER));
    }

    #[test]
    fn text_parts_are_joined() {
        let body = br#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}]}"#;
        let Input::Messages(messages) = ClientRequest::parse(Endpoint::Chat, body).unwrap().input else {
            panic!("a chat request has messages")
        };
        assert_eq!(messages[0].content, "ab");
    }

    #[test]
    fn completions_take_one_prompt_and_default_to_16_tokens() {
        let parse = |body: &[u8]| ClientRequest::parse(Endpoint::Completions, body);
        let req = parse(br#"{"model":"m","prompt":"Once"}"#).unwrap();
        assert_eq!((req.input, req.max_tokens), (Input::Prompt("Once".into()), Some(LEGACY_COMPLETIONS_MAX_TOKENS)));
        assert_eq!(parse(br#"{"model":"m","prompt":["Once"],"max_tokens":5}"#).unwrap().max_tokens, Some(5));
        let param = |body: &[u8]| parse(body).unwrap_err().param;
        assert_eq!(param(br#"{"model":"m"}"#).as_deref(), Some("prompt"));
        assert_eq!(param(br#"{"model":"m","prompt":[]}"#).as_deref(), Some("prompt"));
        assert_eq!(parse(br#"{"model":"m","prompt":[[1,2]]}"#).unwrap().input, Input::Batch);
        assert_eq!(parse(br#"{"model":"m","prompt":["a","b"]}"#).unwrap().input, Input::Batch);
        assert_eq!(param(br#"{"model":"m","prompt":7}"#).as_deref(), Some("prompt"));
        // A chat request still needs its messages.
        let err = ClientRequest::parse(Endpoint::Chat, br#"{"model":"m","prompt":"x"}"#).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("messages"));
    }
}
