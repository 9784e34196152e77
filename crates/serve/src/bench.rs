//! `stopwise bench serve`: what the proxy costs and saves against calling the same upstream
//! directly, in one run. Requests go in rounds (direct, proxy with stopping off, proxy with
//! stopping on) so that drift in the machine's load hits all three alike.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::sse::SseParser;

pub struct BenchArgs {
    /// Base URL of the upstream, e.g. `http://127.0.0.1:8000/v1`.
    pub direct: String,
    /// Base URL of `stopwise serve` in front of it, e.g. `http://127.0.0.1:8080/v1`.
    pub proxy: String,
    pub model: String,
    pub rounds: usize,
    pub max_tokens: u32,
    pub question: String,
    /// The policy of the stopping-on requests (JSON or preset).
    pub policy: String,
}

/// One streamed request, measured.
#[derive(Debug, Clone, Default)]
struct Run {
    first_token: Duration,
    total: Duration,
    /// Content chunks the client received (the forced answer counts as one).
    delivered: u32,
    probe_prompt_tokens: u64,
    probe_completion_tokens: u64,
    stopped: bool,
}

#[derive(Debug, Default)]
struct Series {
    runs: Vec<Run>,
}

impl Series {
    fn quantile(&self, q: f64, f: impl Fn(&Run) -> Duration) -> f64 {
        let mut values: Vec<f64> = self.runs.iter().map(|r| f(r).as_secs_f64() * 1000.0).collect();
        values.sort_by(f64::total_cmp);
        // Nearest rank.
        let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len().max(1));
        values.get(rank - 1).copied().unwrap_or(f64::NAN)
    }

    fn mean(&self, f: impl Fn(&Run) -> f64) -> f64 {
        self.runs.iter().map(f).sum::<f64>() / self.runs.len().max(1) as f64
    }
}

async fn one(client: &reqwest::Client, base: &str, body: &Value) -> Result<Run, String> {
    let started = Instant::now();
    let response =
        client.post(format!("{base}/chat/completions")).json(body).send().await.map_err(|e| format!("{base}: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("{base}: {}", response.status()));
    }
    let mut run = Run::default();
    let mut parser = SseParser::default();
    let mut bytes = response.bytes_stream();
    while let Some(part) = bytes.next().await {
        let part = part.map_err(|e| format!("{base}: {e}"))?;
        for event in parser.push(&part).map_err(|e| format!("{base}: {e}"))? {
            if event.data == "[DONE]" {
                run.total = started.elapsed();
                return Ok(run);
            }
            let chunk: Value = serde_json::from_str(&event.data).map_err(|e| format!("{base}: {e}"))?;
            if chunk["choices"][0]["delta"]["content"].as_str().is_some_and(|t| !t.is_empty()) {
                if run.delivered == 0 {
                    run.first_token = started.elapsed();
                }
                run.delivered += 1;
            }
            let ext = &chunk["stopwise"];
            if !ext.is_null() {
                run.stopped = ext["stopped"] == true;
                run.probe_prompt_tokens = ext["probe_prompt_tokens"].as_u64().unwrap_or(0);
                run.probe_completion_tokens = ext["probe_completion_tokens"].as_u64().unwrap_or(0);
            }
        }
    }
    Err(format!("{base}: stream ended without [DONE]"))
}

/// Runs the benchmark and returns the printed report.
pub async fn run(args: &BenchArgs) -> Result<String, String> {
    let client = reqwest::Client::new();
    let base = json!({
        "model": args.model, "messages": [{"role": "user", "content": args.question}],
        "temperature": 0, "max_tokens": args.max_tokens, "stream": true,
    });
    let policy: Value = serde_json::from_str(&args.policy).unwrap_or_else(|_| json!(args.policy));
    let mut off = base.clone();
    off["stopwise"] = json!({"disable": true});
    let mut on = base.clone();
    on["stopwise"] = json!({"policy": policy});
    let modes = [
        ("direct", &args.direct, &base),
        ("proxy, stopping off", &args.proxy, &off),
        ("proxy, stopping on", &args.proxy, &on),
    ];
    let mut series: Vec<Series> = modes.iter().map(|_| Series::default()).collect();
    // One unmeasured round warms caches (the upstream's prompt cache, connections).
    for (_, url, body) in &modes {
        one(&client, url, body).await?;
    }
    for _ in 0..args.rounds {
        for ((_, url, body), s) in modes.iter().zip(&mut series) {
            s.runs.push(one(&client, url, body).await?);
        }
    }
    let direct = &series[0];
    let (ttft50, total50) = (direct.quantile(0.5, |r| r.first_token), direct.quantile(0.5, |r| r.total));
    let mut out = format!(
        "{} rounds, max_tokens {}, policy {}\n{:<22} {:>9} {:>9} {:>10} {:>10} {:>8} {:>8} {:>9} {:>8}\n",
        args.rounds,
        args.max_tokens,
        args.policy,
        "mode",
        "ttft p50",
        "ttft p99",
        "total p50",
        "total p99",
        "ttft ×",
        "total ×",
        "delivered",
        "decoded/delivered"
    );
    for ((name, _, _), s) in modes.iter().zip(&series) {
        let delivered = s.mean(|r| f64::from(r.delivered));
        // Upstream tokens decoded per token delivered: the relayed tokens (the forced answer
        // stands for the probe's tokens, counted there) plus every probe's decoded tokens.
        let decoded =
            s.mean(|r| f64::from(r.delivered.saturating_sub(u32::from(r.stopped))) + r.probe_completion_tokens as f64);
        out.push_str(&format!(
            "{:<22} {:>7.1}ms {:>7.1}ms {:>8.0}ms {:>8.0}ms {:>8.2} {:>8.2} {:>9.1} {:>8.2}\n",
            name,
            s.quantile(0.5, |r| r.first_token),
            s.quantile(0.99, |r| r.first_token),
            s.quantile(0.5, |r| r.total),
            s.quantile(0.99, |r| r.total),
            s.quantile(0.5, |r| r.first_token) / ttft50,
            s.quantile(0.5, |r| r.total) / total50,
            delivered,
            decoded / delivered.max(1.0),
        ));
    }
    let on = &series[2];
    out.push_str(&format!(
        "stopping on: stopped {}/{} requests, probe prompt tokens {:.0} per request (prefill, not decoded)\n",
        on.runs.iter().filter(|r| r.stopped).count(),
        on.runs.len(),
        on.mean(|r| r.probe_prompt_tokens as f64),
    ));
    Ok(out)
}
