//! What an upstream can do, checked rather than assumed: does it stream, return log-probs in
//! the stream and in probe answers, continue a prefilled assistant message, and free itself when
//! a client hangs up? A stop policy that needs a missing capability would be a silent no-op, so
//! the route refuses to start (or, if configured, runs without stopping) and says which one.
//!
//! Checked at start-up and again on `GET /admin/capabilities`, with short real requests.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::Serialize;
use serde_json::{json, Value};
use stopwise_core::rules::PolicySpec;

use crate::config::{Route, Upstream};
use crate::http_upstream::{HttpProber, ProbeInput};
use crate::request::Endpoint;
use crate::session::Prober;
use crate::sse::SseParser;

/// One capability: `ok` is `None` when it could not be told (the upstream did not answer).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Check {
    pub ok: Option<bool>,
    pub detail: String,
}

impl Check {
    fn yes(detail: impl Into<String>) -> Self {
        Check { ok: Some(true), detail: detail.into() }
    }
    fn no(detail: impl Into<String>) -> Self {
        Check { ok: Some(false), detail: detail.into() }
    }
    fn unknown(detail: impl Into<String>) -> Self {
        Check { ok: None, detail: detail.into() }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Capabilities {
    pub streams: Check,
    /// Per-token log-probs in streamed chunks (`logprobs: true`).
    pub logprobs: Check,
    /// Log-probs in a probe's answer.
    pub probe_logprobs: Check,
    /// A probe continues the partial answer (`continue_final_message`, or a raw completion).
    pub prefill: Check,
    /// After a client hangs up mid-stream the upstream is free for the next request at once.
    pub abort_on_disconnect: Check,
    /// Running usage in every chunk (`stream_options.continuous_usage_stats`, vLLM): exact
    /// token counts when chunks carry several tokens, and the prompt's. Optional: without it
    /// a chunk counts as one token unless it carries log-probs.
    pub usage_in_stream: Check,
}

impl Capabilities {
    pub fn embedded() -> Self {
        let yes = |why: &str| Check::yes(format!("embedded engine: {why}"));
        Capabilities {
            streams: yes("token events"),
            logprobs: yes("every token's log-prob and entropy"),
            probe_logprobs: yes("probe token probabilities"),
            prefill: yes("probes decode after the generated tokens and roll the KV cache back"),
            abort_on_disconnect: yes("a dropped request frees its sequence at the next token"),
            usage_in_stream: yes("every token is an event"),
        }
    }

    /// The capabilities `policy` needs that are known to be missing, by name, with their checks.
    /// Unknown ones (upstream down) do not count: readiness reports those.
    pub fn missing_for(&self, policy: &PolicySpec) -> Vec<(&'static str, &Check)> {
        if *policy == PolicySpec::NEVER {
            return Vec::new();
        }
        let mut needed = vec![("streams", &self.streams), ("prefill", &self.prefill)];
        if policy.reads_token_logprobs() {
            needed.push(("logprobs", &self.logprobs));
        }
        if policy.reads_probe_confidence() {
            needed.push(("probe_logprobs", &self.probe_logprobs));
        }
        needed.into_iter().filter(|(_, check)| check.ok == Some(false)).collect()
    }
}

/// Runs the checks for a route (a second or so against a live server).
pub async fn check(client: &reqwest::Client, route: &Route) -> Capabilities {
    let Upstream::Http(base) = &route.upstream else {
        return Capabilities::embedded();
    };
    let model = json!(route.upstream_model.as_deref().unwrap_or(&route.model));
    let limit = route.idle_timeout.min(CHECK_TIME_LIMIT);
    let (streams, logprobs) = check_stream(client, base, &model, limit).await;
    let (prefill, probe_logprobs) = check_prefill(client, route, &model, limit).await;
    let abort_on_disconnect = match streams.ok {
        Some(true) => check_abort(client, base, &model, limit).await,
        _ => Check::unknown("needs streaming"),
    };
    let usage_in_stream = match streams.ok {
        Some(true) => check_running_usage(client, base, &model, limit).await,
        _ => Check::unknown("needs streaming"),
    };
    Capabilities { streams, logprobs, probe_logprobs, prefill, abort_on_disconnect, usage_in_stream }
}

async fn check_running_usage(client: &reqwest::Client, base: &str, model: &Value, limit: Duration) -> Check {
    let url = format!("{base}/{}", Endpoint::Chat.path());
    let mut request = count_request(model, 4, true);
    request["logprobs"] = json!(false);
    request["stream_options"] = json!({"include_usage": true, "continuous_usage_stats": true});
    let response = match client.post(&url).json(&request).timeout(limit).send().await {
        Ok(response) if response.status().is_success() => response,
        Ok(response) => return Check::no(format!("`continuous_usage_stats` answered {}", response.status())),
        Err(e) => return Check::unknown(format!("{url}: {e}")),
    };
    let mut parser = SseParser::default();
    let (mut with_choices, mut with_usage) = (0, 0);
    let mut bytes = response.bytes_stream();
    while let Some(Ok(part)) = bytes.next().await {
        for event in parser.push(&part).unwrap_or_default() {
            let chunk: Value = serde_json::from_str(&event.data).unwrap_or_default();
            if chunk["choices"].as_array().is_some_and(|c| !c.is_empty()) {
                with_choices += 1;
                with_usage += usize::from(chunk["usage"]["completion_tokens"].is_u64());
            }
        }
    }
    match (with_choices, with_usage) {
        (n, m) if n > 0 && m == n => Check::yes(format!("usage in all {n} chunks")),
        (n, m) => Check::no(format!("usage in {m} of {n} chunks with choices")),
    }
}

const COUNT: &str = "Count from 1 to 100, separated by commas.";

fn count_request(model: &Value, max_tokens: u32, stream: bool) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": COUNT}], "max_tokens": max_tokens,
           "temperature": 0, "stream": stream, "logprobs": stream})
}

async fn check_stream(client: &reqwest::Client, base: &str, model: &Value, limit: Duration) -> (Check, Check) {
    let url = format!("{base}/{}", Endpoint::Chat.path());
    let response = match client.post(&url).json(&count_request(model, 4, true)).timeout(limit).send().await {
        Ok(response) => response,
        Err(e) => return (Check::unknown(format!("{url}: {e}")), Check::unknown("needs streaming")),
    };
    if !response.status().is_success() {
        let status = response.status();
        let body = crate::http_upstream::error_text(response, limit).await;
        let why = format!(
            "a streamed request with logprobs answered {status}: {}",
            body.chars().take(200).collect::<String>()
        );
        return (Check::no(why.clone()), Check::no(why));
    }
    let mut parser = SseParser::default();
    let (mut chunks, mut done, mut with_logprobs) = (0, false, 0);
    let mut bytes = response.bytes_stream();
    while let Some(Ok(part)) = bytes.next().await {
        for event in parser.push(&part).unwrap_or_default() {
            if event.data == "[DONE]" {
                done = true;
                continue;
            }
            chunks += 1;
            let chunk: Value = serde_json::from_str(&event.data).unwrap_or_default();
            if chunk["choices"][0]["logprobs"]["content"].as_array().is_some_and(|l| !l.is_empty()) {
                with_logprobs += 1;
            }
        }
    }
    let streams = match (chunks, done) {
        (0, _) => Check::no("`stream: true` sent no `data:` chunks"),
        (n, false) => Check::no(format!("{n} chunks but no `data: [DONE]`")),
        (n, true) => Check::yes(format!("{n} chunks, then [DONE]")),
    };
    let logprobs = match with_logprobs {
        0 => Check::no("`logprobs: true` streamed no `logprobs.content`"),
        n => Check::yes(format!("{n} of {chunks} chunks carry logprobs.content")),
    };
    (streams, logprobs)
}

/// A probe on "1, 2, … 7," must go on counting: a server that ignores the prefill starts a new
/// assistant turn instead.
async fn check_prefill(client: &reqwest::Client, route: &Route, model: &Value, limit: Duration) -> (Check, Check) {
    let Some(base) = route.probe_base() else {
        return (Check::unknown("no probe upstream"), Check::unknown("no probe upstream"));
    };
    let prober = HttpProber {
        client: client.clone(),
        base: base.to_owned(),
        mode: route.probe.mode,
        model: model.clone(),
        input: ProbeInput::Messages(std::sync::Arc::new(vec![json!({"role": "user", "content": COUNT})])),
        suffix: " ".into(),
        max_tokens: 4,
        timeout: limit,
        default_system: route.probe.default_system.clone(),
    };
    match prober.probe("1, 2, 3, 4, 5, 6, 7,".into(), 0).await {
        Err(e) => (Check::unknown(format!("probe to {base}: {e}")), Check::unknown("probe failed")),
        Ok(outcome) => {
            let prefill = if outcome.text.trim_start().starts_with('8') {
                Check::yes(format!("{:?} mode: \"1, …, 7,\" was continued with {:?}", route.probe.mode, outcome.text))
            } else {
                Check::no(format!(
                    "{:?} mode: \"1, …, 7,\" was answered with {:?}, not continued (does {base} honour it?)",
                    route.probe.mode, outcome.text
                ))
            };
            let logprobs = if outcome.mean_prob > 0.0 {
                Check::yes(format!("mean answer-token probability {:.3}", outcome.mean_prob))
            } else {
                Check::no("the probe's answer carried no log-probs")
            };
            (prefill, logprobs)
        }
    }
}

/// Starts a long stream, hangs up after its first chunk, and times a one-token request against
/// the same request alone. A server that keeps generating for the gone client makes the second
/// wait (one-slot servers) or at least share its compute.
async fn check_abort(client: &reqwest::Client, base: &str, model: &Value, limit: Duration) -> Check {
    let url = format!("{base}/{}", Endpoint::Chat.path());
    let one_token = || client.post(&url).json(&count_request(model, 1, false)).timeout(limit).send();
    let started = Instant::now();
    if one_token().await.is_err() {
        return Check::unknown("a one-token request failed");
    }
    let alone = started.elapsed();
    let long = client.post(&url).json(&count_request(model, 256, true)).timeout(limit).send().await;
    let Ok(long) = long else { return Check::unknown("the long request failed") };
    let mut bytes = long.bytes_stream();
    let _ = bytes.next().await;
    drop(bytes);
    let started = Instant::now();
    if one_token().await.is_err() {
        return Check::unknown("the one-token request after the hang-up failed");
    }
    let after = started.elapsed();
    let detail =
        format!("one-token request alone {} ms, right after a hang-up {} ms", alone.as_millis(), after.as_millis());
    if after <= alone * 3 + Duration::from_millis(500) {
        Check::yes(detail)
    } else {
        Check::no(detail)
    }
}

/// Longest any one check request may take (less when the route's idle timeout is shorter).
const CHECK_TIME_LIMIT: Duration = Duration::from_secs(30);
