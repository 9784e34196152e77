//! Prometheus metrics, every name starting with `stopwise_`, served at `GET /metrics`.
//!
//! Counted per route (`model` label): requests by outcome, tokens delivered to clients, probes
//! and the tokens they cost, time to first token, request duration and the checkpoint at which
//! requests stopped. Tokens *saved* are not counted: what a stopped request would have generated
//! is not measured here, and nothing claims a saving it did not measure (audited full runs do).

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::request::Endpoint;

/// The process's recorder, installed on first use (metrics are per process, as Prometheus
/// scrapes them; several servers in one test process share it).
pub fn handle() -> Result<PrometheusHandle, String> {
    static HANDLE: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();
    HANDLE.get_or_init(install).clone()
}

fn install() -> Result<PrometheusHandle, String> {
    const SECONDS: &[f64] = &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];
    const TOKENS: &[f64] = &[16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0];
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_tokens".into()), TOKENS))
        .map_err(|e| format!("metrics buckets: {e}"))?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|e| format!("cannot install the metrics recorder: {e}"))?;
    describe();
    Ok(handle)
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!("stopwise_http_requests_total", "HTTP requests answered, by endpoint and status");
    describe_counter!(
        "stopwise_requests_total",
        "Completions that started, by outcome: stopped (early), completed (by the upstream), failed, cancelled (client gone)"
    );
    describe_gauge!("stopwise_requests_in_flight", "Completions streaming now");
    describe_counter!("stopwise_completion_tokens_total", Unit::Count, "Generated tokens delivered to clients");
    describe_counter!(
        "stopwise_probes_total",
        "Probes by result: answered, failed (fail open), given_up (engine probe not back by the next checkpoint), late"
    );
    describe_counter!("stopwise_probe_tokens_total", Unit::Count, "Tokens probes cost, by kind: prompt or completion");
    describe_histogram!("stopwise_probe_duration_seconds", Unit::Seconds, "Time an HTTP probe took to answer");
    describe_histogram!("stopwise_time_to_first_token_seconds", Unit::Seconds, "From request to first generated text");
    describe_histogram!("stopwise_request_duration_seconds", Unit::Seconds, "From request to the end of its stream");
    describe_gauge!("stopwise_engine_waiting_requests", "Embedded engine: requests waiting for a free sequence");
    describe_gauge!("stopwise_engine_active_sequences", "Embedded engine: requests decoding now");
    describe_counter!(
        "stopwise_engine_cancelled_requests_total",
        "Embedded engine: requests cancelled (stopped early or client gone)"
    );
    describe_histogram!("stopwise_stop_checkpoint_tokens", Unit::Count, "Generated tokens at which requests stopped");
    describe_counter!("stopwise_store_traces_written_total", "Traces written to the trace store");
    describe_counter!(
        "stopwise_store_traces_dropped_total",
        "Traces dropped, by reason: queue_full (the writer fell behind) or store_error (the store failed)"
    );
    describe_gauge!("stopwise_store_queue_depth", "Traces waiting to be written to the store");
    describe_counter!("stopwise_feedback_total", "Feedback posts, by result: received, stored, unknown_id");
    describe_counter!(
        "stopwise_audits_total",
        "Audits (requests run again to their end), by result: run, dropped (cap reached), failed"
    );
    describe_counter!(
        "stopwise_policy_changes_total",
        "Changes of a route's setting, by kind: fallback, promotion, proposal, adopted (from another replica)"
    );
    describe_gauge!("stopwise_online_epsilon", "The risk budget the live estimate is held to");
    describe_gauge!("stopwise_online_audits_in_window", "Audits in the live estimate's window");
    describe_gauge!(
        "stopwise_online_active_setting",
        "Position of the active setting on the route's ladder (0: most aggressive)"
    );
    describe_gauge!("stopwise_online_generation", "How many times the route's active setting changed");
    describe_gauge!("stopwise_online_risk", "Per ladder setting: risk over the audit window (disagreement or EM drop)");
    describe_gauge!(
        "stopwise_online_risk_bound",
        "Per ladder setting: upper confidence bound on the risk at level 1 - delta"
    );
    describe_gauge!(
        "stopwise_online_token_reduction",
        "Per ladder setting: 1 - tokens paid / full-run tokens over the window"
    );
    describe_gauge!(
        "stopwise_online_certified",
        "Per ladder setting: 1 when the window certifies it (risk bound <= epsilon)"
    );
}

/// The store writer's queue, read at scrape time.
pub fn store_queue(depth: usize) {
    gauge!("stopwise_store_queue_depth").set(depth as f64);
}

pub fn feedback(result: &'static str) {
    counter!("stopwise_feedback_total", "result" => result).increment(1);
}

/// The embedded engine's load, read at scrape time.
pub fn engine_load(stats: &stopwise_engine::EngineStats) {
    gauge!("stopwise_engine_waiting_requests").set(stats.waiting as f64);
    gauge!("stopwise_engine_active_sequences").set(stats.active as f64);
    counter!("stopwise_engine_cancelled_requests_total").absolute(stats.cancelled);
}

/// An answered HTTP request.
pub fn http_request(endpoint: &'static str, status: u16) {
    counter!("stopwise_http_requests_total", "endpoint" => endpoint, "status" => status.to_string()).increment(1);
}

/// How a completion ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Stopped,
    Completed,
    Failed,
    Cancelled,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Stopped => "stopped",
            Outcome::Completed => "completed",
            Outcome::Failed => "failed",
            Outcome::Cancelled => "cancelled",
        }
    }
}

/// What became of a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeResult {
    /// Its answer reached the rule.
    Answered,
    /// The request failed or timed out (the stream went on: fail open).
    Failed,
    /// An engine probe not back by the next checkpoint, which was asked for instead.
    GivenUp,
    /// A given-up engine probe that came after all: paid for, read by nobody.
    Late,
}

impl ProbeResult {
    fn label(self) -> &'static str {
        match self {
            ProbeResult::Answered => "answered",
            ProbeResult::Failed => "failed",
            ProbeResult::GivenUp => "given_up",
            ProbeResult::Late => "late",
        }
    }
}

/// One completion's measurements, recorded when it is dropped: a session that ends any way at
/// all (the client gone included) is counted once.
#[derive(Debug)]
pub struct Meter {
    model: String,
    endpoint: &'static str,
    started: Instant,
    first_token: bool,
    outcome: Outcome,
    delivered: u64,
    stopped_at: Option<u32>,
}

impl Meter {
    pub fn start(model: &str, endpoint: Endpoint, started: Instant) -> Self {
        let endpoint = endpoint.path();
        gauge!("stopwise_requests_in_flight", "model" => model.to_owned()).increment(1.0);
        Meter {
            model: model.to_owned(),
            endpoint,
            started,
            first_token: false,
            outcome: Outcome::Cancelled,
            delivered: 0,
            stopped_at: None,
        }
    }

    /// Generated text reached the client; `delivered` tokens so far.
    pub fn text(&mut self, delivered: u32) {
        self.delivered = delivered.into();
        if !self.first_token {
            self.first_token = true;
            histogram!("stopwise_time_to_first_token_seconds", "model" => self.model.clone())
                .record(self.started.elapsed());
        }
    }

    pub fn probe(
        &self,
        result: ProbeResult,
        prompt_tokens: Option<u32>,
        completion_tokens: u32,
        took: Option<Duration>,
    ) {
        let model = self.model.clone();
        counter!("stopwise_probes_total", "model" => model.clone(), "result" => result.label()).increment(1);
        if let Some(n) = prompt_tokens {
            counter!("stopwise_probe_tokens_total", "model" => model.clone(), "kind" => "prompt").increment(n.into());
        }
        counter!("stopwise_probe_tokens_total", "model" => model.clone(), "kind" => "completion")
            .increment(completion_tokens.into());
        if let Some(took) = took {
            histogram!("stopwise_probe_duration_seconds", "model" => model).record(took);
        }
    }

    /// The completion ended; `delivered` generated tokens reached the client.
    pub fn finish(&mut self, outcome: Outcome, delivered: u32, stopped_at: Option<u32>) {
        self.outcome = outcome;
        self.delivered = delivered.into();
        self.stopped_at = stopped_at;
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        let model = self.model.clone();
        gauge!("stopwise_requests_in_flight", "model" => model.clone()).decrement(1.0);
        counter!("stopwise_requests_total", "model" => model.clone(), "endpoint" => self.endpoint, "outcome" => self.outcome.label())
            .increment(1);
        counter!("stopwise_completion_tokens_total", "model" => model.clone()).increment(self.delivered);
        histogram!("stopwise_request_duration_seconds", "model" => model.clone()).record(self.started.elapsed());
        if let Some(tokens) = self.stopped_at {
            histogram!("stopwise_stop_checkpoint_tokens", "model" => model).record(f64::from(tokens));
        }
    }
}
