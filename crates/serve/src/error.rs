//! The one place errors become responses: an OpenAI-style body
//! `{"error":{"message","type","param","code"}}` with the matching status, or the same object as
//! an SSE `error` event once a stream has started.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// OpenAI's `type`: `invalid_request_error`, `not_found_error`, `upstream_error`, ...
    pub kind: &'static str,
    /// The request field at fault, if any.
    pub param: Option<String>,
    pub code: Option<String>,
    /// Seconds, for 429.
    pub retry_after: Option<u32>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self { status, message: message.into(), kind, param: None, code: None, retry_after: None }
    }

    /// 400 for a request field that is missing or wrong.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self { param: Some(param.into()), ..Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message) }
    }

    /// 400 for a body that is not JSON at all.
    pub fn bad_json(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    pub fn too_large(limit: usize) -> Self {
        Self {
            code: Some("request_too_large".into()),
            ..Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                format!("request body is larger than the limit of {limit} bytes"),
            )
        }
    }

    pub fn unknown_model(model: &str, known: &[&str]) -> Self {
        Self {
            param: Some("model".into()),
            code: Some("model_not_found".into()),
            ..Self::new(
                StatusCode::NOT_FOUND,
                "not_found_error",
                format!("model `{model}` is not served here; models: {}", known.join(", ")),
            )
        }
    }

    pub fn busy(message: impl Into<String>) -> Self {
        Self { retry_after: Some(1), ..Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", message) }
    }

    /// The upstream could not be reached or broke off.
    pub fn upstream(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_GATEWAY, "upstream_error", message)
    }

    /// The upstream went silent for longer than the route allows.
    pub fn upstream_timeout(message: impl Into<String>) -> Self {
        Self::new(StatusCode::GATEWAY_TIMEOUT, "upstream_error", message)
    }

    /// The upstream answered with an error: its status and (when it is OpenAI-shaped) its body.
    pub fn from_upstream(status: u16, body: &str) -> Self {
        // Only an upstream's own error statuses are passed on: anything else that is not a success
        // (a redirect, which is not followed, or a 1xx) is the upstream failing the proxy.
        let status = StatusCode::from_u16(status)
            .ok()
            .filter(|s| s.is_client_error() || s.is_server_error())
            .unwrap_or(StatusCode::BAD_GATEWAY);
        let parsed: Option<Value> = serde_json::from_str(body).ok();
        let error = parsed.as_ref().and_then(|v| v.get("error"));
        let text = |key: &str| error.and_then(|e| e.get(key)).and_then(Value::as_str).map(str::to_owned);
        let message = text("message")
            .or_else(|| error.and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_else(|| format!("upstream answered {status}: {}", body.chars().take(500).collect::<String>()));
        Self { param: text("param"), code: text("code"), ..Self::new(status, "upstream_error", message) }
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "authentication_error", message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", message)
    }

    pub fn body(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}})
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.status)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}
