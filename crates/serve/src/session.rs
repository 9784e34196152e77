//! One chat completion in flight: relays what the upstream generates to the client as it arrives,
//! feeds probed answers to the stop rule, and when the rule says stop, cancels the upstream and
//! finishes the stream with the forced answer and honest accounting.
//!
//! Upstreams (HTTP or embedded) report [`Piece`]s on a channel from a task the session owns;
//! dropping the session aborts that task, which drops the upstream request (reqwest closes the
//! connection, the engine frees the sequence). Probes are gated the same way on both: at each
//! checkpoint the rule says whether it needs an answer there, and only then is one taken. HTTP
//! probes run as separate tasks, so the client's stream never waits for one; the embedded engine
//! is asked for one and reports it in order with the tokens.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value};
use stopwise_core::answer::Task;
use stopwise_core::recorder::{Ending, ProbeReading, Recorder, TraceHead};
use stopwise_core::rules::{Decision, PolicySpec, Rule};
use stopwise_core::trace::{Checkpoint, ProbeSettings, Served};
use stopwise_db::Writer;
use stopwise_engine::ProbeRequester;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::error::ApiError;
use crate::metrics::{Meter, Outcome, ProbeResult};
use crate::request::Endpoint;
pub use crate::shape::Head;
use crate::sse::Frame;

/// What an upstream reports while it generates.
#[derive(Debug)]
pub enum Piece {
    /// The chunk identity that stopwise's own chunks must share.
    Head(Head),
    /// A chunk for the client. `data` is relayed as is; `text` is the answer text it adds and
    /// `reasoning` the reasoning text (reasoning models), `tokens` the generated tokens it stands
    /// for, `logprob` their summed log-probability when known.
    Chunk {
        data: String,
        text: String,
        reasoning: String,
        tokens: u32,
        logprob: Option<f64>,
        entropy: Option<f64>,
    },
    PromptTokens(u32),
    /// A probe the embedded engine took where the session asked for one (between two tokens).
    Probe(ProbeOutcome),
    /// The embedded engine finished; the session writes the final chunk.
    Finished {
        finish_reason: &'static str,
    },
    /// The upstream's stream ended (`[DONE]`), its own final chunks already relayed.
    Done,
    Failed(ApiError),
}

/// A probed answer and what it cost.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeOutcome {
    /// Generated tokens when the probe was taken.
    pub after_tokens: u32,
    /// The answer line the probe decoded.
    pub text: String,
    pub answer_tokens: u32,
    pub mean_prob: f32,
    pub min_prob: f32,
    /// `None` when the upstream does not report it (the embedded engine reuses its KV cache).
    pub prompt_tokens: Option<u32>,
    pub completion_tokens: u32,
}

/// Launches probes that are requests of their own (HTTP upstreams).
pub trait Prober: Send + Sync {
    /// A probe of the answer after `partial`, the text generated so far; `Err` fails open.
    fn probe(&self, partial: String, after_tokens: u32) -> ProbeFuture;
}

pub type ProbeFuture = std::pin::Pin<Box<dyn Future<Output = Result<ProbeOutcome, String>> + Send>>;

/// How this request's probes are taken.
pub enum Probes {
    /// A request per probe, whose outcome comes back as a future.
    Launch(Arc<dyn Prober>),
    /// The embedded engine probes between two tokens where asked; the outcome comes as a
    /// [`Piece::Probe`] in order with the tokens.
    Engine(ProbeRequester),
}

/// How this request may stop.
pub struct StopPlan {
    pub policy: PolicySpec,
    pub task: Task,
    pub interval: u32,
    pub answer_template: String,
    /// Around the reasoning of a model that streams it apart (`reasoning_content`), so that a
    /// probe continues the same text the model's chat template would show it.
    pub reasoning_open: String,
    pub reasoning_close: String,
    /// The client's `max_tokens` and `stop`, which bound the forced answer as well.
    pub max_tokens: Option<u32>,
    /// Probes asked for at most; later checkpoints go unprobed.
    pub max_probes: u32,
    pub stop: Vec<String>,
    pub probes: Probes,
}

/// Where a served request's trace goes, and what it says besides what the session sees.
pub struct TraceSink {
    pub writer: Writer,
    pub route: String,
    /// The model name the upstream generated with.
    pub model: String,
    pub probe: ProbeSettings,
    /// The route's task, for a request served without stopping.
    pub task: Task,
    /// The client's last user message, kept only when the route stores text.
    pub question: Option<String>,
    pub store_text: bool,
    pub started_ms: u64,
    /// The audit to run once the client has its answer, when this request is audited.
    pub audit: Option<crate::audit::AuditJob>,
}

/// Aborts the task when dropped, so that nothing outlives the request that started it.
pub struct AbortOnDrop<T>(pub JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs the session until the stream is finished or the client is gone.
pub async fn run(
    producer: AbortOnDrop<()>,
    mut pieces: mpsc::Receiver<Piece>,
    endpoint: Endpoint,
    plan: Option<StopPlan>,
    meter: Meter,
    sink: Option<TraceSink>,
    out: mpsc::Sender<Frame>,
) {
    let stopping = plan.is_some();
    let mut state = State::new(endpoint, plan, meter);
    if let (false, Some(sink)) = (stopping, &sink) {
        state.recorder = Recorder::new(sink.task);
    }
    state.sink = sink;
    let mut probe: Option<AbortOnDrop<Result<ProbeOutcome, String>>> = None;
    loop {
        let event = tokio::select! {
            piece = pieces.recv() => Event::Piece(piece),
            result = async { (&mut probe.as_mut()?.0).await.ok() }, if probe.is_some() => Event::Probe(result),
            () = out.closed() => return,
        };
        if matches!(event, Event::Probe(_)) {
            probe = None;
        }
        let frames = match event {
            Event::Piece(Some(Piece::Chunk { data, text, reasoning, tokens, logprob, entropy })) => {
                state.add(&text, &reasoning, tokens, logprob, entropy);
                if probe.is_none() {
                    probe = state.due_probe().map(|future| AbortOnDrop(tokio::spawn(future)));
                }
                vec![Frame::Data(data)]
            }
            Event::Piece(Some(Piece::Head(head))) => {
                state.head = Some(head);
                continue;
            }
            Event::Piece(Some(Piece::PromptTokens(n))) => {
                state.prompt_tokens = Some(n);
                continue;
            }
            Event::Piece(Some(Piece::Probe(outcome))) | Event::Probe(Some(Ok(outcome))) => {
                match state.observe(outcome) {
                    Some(frames) => frames,
                    None => continue,
                }
            }
            Event::Probe(failed) => {
                // Fail open: the request goes on as if the probe had not been taken.
                if let Some(Err(why)) = failed {
                    tracing::warn!("probe failed, continuing without it: {why}");
                }
                state.probe_failed(ProbeResult::Failed);
                continue;
            }
            Event::Piece(Some(Piece::Finished { finish_reason })) => {
                state.meter.finish(Outcome::Completed, state.tokens(), None);
                state.record(finish_reason, None);
                vec![Frame::Data(state.final_chunk(finish_reason, None).to_string()), Frame::Done]
            }
            Event::Piece(Some(Piece::Done)) => {
                state.meter.finish(Outcome::Completed, state.tokens(), None);
                state.record("stop", None);
                state.extension_chunk().map(|c| Frame::Data(c.to_string())).into_iter().chain([Frame::Done]).collect()
            }
            Event::Piece(Some(Piece::Failed(e))) => {
                state.meter.finish(Outcome::Failed, state.tokens(), None);
                vec![Frame::Error(e)]
            }
            Event::Piece(None) => {
                state.meter.finish(Outcome::Failed, state.tokens(), None);
                vec![Frame::Error(ApiError::upstream("the upstream ended without finishing"))]
            }
        };
        let last = matches!(frames.last(), Some(Frame::Done | Frame::Error(_)));
        for frame in frames {
            if out.send(frame).await.is_err() {
                return;
            }
        }
        if last {
            // Dropping the producer now cancels the upstream before the client has even read
            // the last frames.
            drop(producer);
            // The client has its answer: the audit starts only now, so its latency is unchanged.
            if let Some((job, head, task)) = state.audit.take() {
                job.start(head, task);
            }
            return;
        }
    }
}

enum Event {
    Piece(Option<Piece>),
    Probe(Option<Result<ProbeOutcome, String>>),
}

struct State {
    endpoint: Endpoint,
    plan: Option<(StopPlan, Rule)>,
    head: Option<Head>,
    prompt_tokens: Option<u32>,
    /// The answer text so far, and the reasoning text of a model that streams it apart.
    text: String,
    reasoning: String,
    /// Generated tokens, their segments' statistics and the probed checkpoints.
    recorder: Recorder,
    next_probe_at: u32,
    probe_prompt_tokens: Option<u32>,
    probe_completion_tokens: u32,
    probes: u32,
    /// Probes launched or asked of the engine (`probes` counts those that answered).
    asked: u32,
    /// The checkpoint whose probe is in flight (or asked of the engine), as generation alone
    /// describes it, and when the probe was asked for.
    pending: Option<(Checkpoint, Instant)>,
    meter: Meter,
    sink: Option<TraceSink>,
    /// The audit due once the last frames are sent, and the trace head it shares.
    audit: Option<(crate::audit::AuditJob, TraceHead, Task)>,
}

impl State {
    fn new(endpoint: Endpoint, plan: Option<StopPlan>, meter: Meter) -> Self {
        let next_probe_at = plan.as_ref().map_or(u32::MAX, |p| p.interval);
        let task = plan.as_ref().map_or(Task::Text, |p| p.task);
        State {
            endpoint,
            plan: plan.map(|p| {
                let rule = p.policy.start(p.task);
                (p, rule)
            }),
            head: None,
            prompt_tokens: None,
            text: String::new(),
            reasoning: String::new(),
            recorder: Recorder::new(task),
            next_probe_at,
            probe_prompt_tokens: Some(0),
            probe_completion_tokens: 0,
            probes: 0,
            asked: 0,
            pending: None,
            meter,
            sink: None,
            audit: None,
        }
    }

    fn tokens(&self) -> u32 {
        self.recorder.tokens()
    }

    fn add(&mut self, text: &str, reasoning: &str, tokens: u32, logprob: Option<f64>, entropy: Option<f64>) {
        self.text.push_str(text);
        self.reasoning.push_str(reasoning);
        self.recorder.generated(tokens, logprob, entropy);
        if !text.is_empty() || !reasoning.is_empty() {
            self.meter.text(self.tokens());
        }
    }

    /// Takes the probe due now, if the rule needs its answer here (a budget or a log-prob window
    /// does not at most checkpoints: no probe, no cost). An HTTP probe is returned to be run; the
    /// engine is only asked for one, whose outcome comes later as a [`Piece::Probe`].
    fn due_probe(&mut self) -> Option<ProbeFuture> {
        let tokens = self.tokens();
        if tokens < self.next_probe_at {
            return None;
        }
        let interval = self.plan.as_ref()?.0.interval;
        // The next probe is due at the next multiple of the interval after this one, however
        // long this one takes: probes never queue up behind a slow upstream.
        self.next_probe_at = (tokens / interval + 1) * interval;
        // Only an engine probe can still be pending here (no HTTP probe is due while one runs).
        // It is given up as failed: one that has not come by the next checkpoint is late to
        // matter, and one that no longer fits in the context never comes; this checkpoint is
        // asked for instead.
        self.probe_failed(ProbeResult::GivenUp);
        let checkpoint = self.recorder.checkpoint();
        let (plan, rule) = self.plan.as_mut()?;
        if !rule.needs_probe(&checkpoint) || self.asked >= plan.max_probes {
            // Without a probe the rule cannot stop here; `decide` keeps its state in step.
            rule.decide(&checkpoint);
            return None;
        }
        self.asked += 1;
        self.pending = Some((checkpoint, Instant::now()));
        match &self.plan.as_ref()?.0.probes {
            Probes::Launch(prober) => Some(prober.clone().probe(self.partial(), tokens)),
            Probes::Engine(requester) => {
                requester.request(tokens);
                None
            }
        }
    }

    /// The generated text as the model sees it: reasoning streamed apart goes back inside its
    /// block, which a probe closes so that the model answers.
    fn partial(&self) -> String {
        match &self.plan {
            Some((plan, _)) if !self.reasoning.is_empty() => {
                format!("{}{}{}{}", plan.reasoning_open, self.reasoning, plan.reasoning_close, self.text)
            }
            _ => self.text.clone(),
        }
    }

    /// A probe in flight failed or was given up: the rule sees its checkpoint without an answer.
    fn probe_failed(&mut self, result: ProbeResult) {
        if let (Some((checkpoint, sent)), Some((_, rule))) = (self.pending.take(), self.plan.as_mut()) {
            self.meter.probe(result, None, 0, Some(sent.elapsed()));
            rule.decide(&checkpoint);
        }
    }

    /// Feeds a probe to the rule; the frames that end the stream when it says stop.
    fn observe(&mut self, outcome: ProbeOutcome) -> Option<Vec<Frame>> {
        self.plan.as_ref()?;
        self.probes += 1;
        self.probe_prompt_tokens = self.probe_prompt_tokens.zip(outcome.prompt_tokens).map(|(a, b)| a + b);
        self.probe_completion_tokens += outcome.completion_tokens;
        // The rule asked for this answer at the pending checkpoint (`needs_probe` already ran on
        // it). An engine probe may land a few tokens after that checkpoint when the engine runs
        // ahead of the session: the rule still decides at the checkpoint it asked about, and
        // `after_tokens` reports where the stream is cut. An engine probe given up at the next
        // checkpoint that still comes is paid for but too late for the rule.
        let Some((skeleton, asked_at)) = self.pending.take() else {
            self.meter.probe(ProbeResult::Late, outcome.prompt_tokens, outcome.completion_tokens, None);
            return None;
        };
        self.meter.probe(
            ProbeResult::Answered,
            outcome.prompt_tokens,
            outcome.completion_tokens,
            Some(asked_at.elapsed()),
        );
        let reading = ProbeReading {
            text: outcome.text.clone(),
            answer_tokens: outcome.answer_tokens,
            mean_prob: outcome.mean_prob,
            min_prob: outcome.min_prob,
        };
        let checkpoint = self.recorder.answered(skeleton, reading);
        self.recorder.keep(checkpoint.clone(), self.partial().len());
        let tokens = self.tokens();
        let (plan, rule) = self.plan.as_mut()?;
        if rule.decide(&checkpoint) == Decision::Continue {
            return None;
        }
        // The client's max_tokens bounds the forced answer too: when it would not fit, the
        // request goes on as if the rule had not stopped (the upstream ends at the limit anyway).
        if plan.max_tokens.is_some_and(|max| tokens + outcome.answer_tokens > max) {
            return None;
        }
        let answer = if checkpoint.answer.is_empty() { outcome.text.trim() } else { checkpoint.answer.as_str() };
        let mut forced = plan.answer_template.replace("{answer}", answer);
        if !self.reasoning.is_empty() && self.text.is_empty() {
            // Still inside the reasoning of a model that streams it apart: the answer becomes the
            // message's content, which that field keeps apart, so no separating blank line.
            forced = forced.trim_start().to_owned();
        }
        // And its stop strings: the forced answer ends before the first one, which is not sent.
        if let Some(cut) = plan.stop.iter().filter_map(|s| forced.find(s.as_str())).min() {
            forced.truncate(cut);
        }
        let content = self.chunk(Some(&forced), Value::Null);
        self.meter.finish(Outcome::Stopped, tokens + outcome.answer_tokens, Some(outcome.after_tokens));
        let stop = StopInfo {
            checkpoint_tokens: outcome.after_tokens,
            answer_tokens: outcome.answer_tokens,
            answer: checkpoint.answer.clone(),
            forced: forced.clone(),
        };
        self.record("stop", Some(&stop));
        let last = self.final_chunk("stop", Some(stop));
        Some(vec![Frame::Data(content.to_string()), Frame::Data(last.to_string()), Frame::Done])
    }

    fn chunk(&self, text: Option<&str>, finish_reason: Value) -> Value {
        let head = self.head.clone().unwrap_or_else(|| Head { id: new_id(), created: now(), model: String::new() });
        crate::shape::chunk(self.endpoint, &head, text, false, finish_reason)
    }

    /// The last chunk: finish reason, usage of what the client received, and the extension.
    fn final_chunk(&self, finish_reason: &str, stop: Option<StopInfo>) -> Value {
        let mut chunk = self.chunk(None, json!(finish_reason));
        // The forced answer is counted with the tokens the probe decoded for it; the template's
        // own few tokens are not measured and not counted.
        let completion = self.tokens() + stop.as_ref().map_or(0, |s| s.answer_tokens);
        let prompt = self.prompt_tokens.unwrap_or(0);
        chunk["usage"] =
            json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion});
        if let Some(extension) = self.extension(stop.as_ref()) {
            chunk["stopwise"] = extension;
        }
        chunk
    }
}

impl State {
    /// What stopping did and cost; `None` when stopping was off.
    fn extension(&self, stop: Option<&StopInfo>) -> Option<Value> {
        let (plan, _) = self.plan.as_ref()?;
        Some(json!({
            "stopped": stop.is_some(),
            "stop_reason": stop.map(|_| plan.policy.label()),
            "checkpoint_tokens": stop.map(|s| s.checkpoint_tokens),
            // Where the stream was cut: later than the checkpoint when the probe took a while,
            // as the stream never waits for one.
            "generated_tokens": self.tokens(),
            "probes": self.probes,
            "probe_prompt_tokens": self.probe_prompt_tokens,
            "probe_completion_tokens": self.probe_completion_tokens,
            "policy": plan.policy,
            "policy_version": plan.policy.version(),
        }))
    }

    /// After an HTTP upstream's own last chunk, when stopping was on but did not stop: a chunk
    /// with no choices (as OpenAI's usage chunk) that reports what the probes cost.
    fn extension_chunk(&self) -> Option<Value> {
        let mut chunk = self.chunk(None, Value::Null);
        chunk["choices"] = json!([]);
        chunk["stopwise"] = self.extension(None)?;
        Some(chunk)
    }
}

struct StopInfo {
    checkpoint_tokens: u32,
    answer_tokens: u32,
    /// The probed answer and the text the client received in its place.
    answer: String,
    forced: String,
}

impl State {
    /// Hands the request's trace to the store's writer, which never makes the client wait: what
    /// the client received, the probed checkpoints, and how stopping served it.
    fn record(&mut self, finish_reason: &str, stop: Option<&StopInfo>) {
        let Some(mut sink) = self.sink.take() else { return };
        let Some(head) = &self.head else { return };
        let tokens = self.tokens();
        let (policy, interval, asked_all) = match &self.plan {
            Some((plan, _)) => (plan.policy.clone(), plan.interval, self.asked < plan.max_probes),
            None => (PolicySpec::NEVER, sink.probe.interval, false),
        };
        // A full run probed at every checkpoint it passed can replay any rule.
        let probed_everywhere = self.recorder.checkpoints().len() as u64 == u64::from(tokens / interval.max(1));
        let complete = stop.is_none() && self.plan.is_some() && probed_everywhere && asked_all;
        let delivered = tokens + stop.map_or(0, |s| s.answer_tokens);
        let started_ms = sink.started_ms;
        let served = Served {
            route: sink.route.clone(),
            response_id: head.id.clone(),
            policy: policy.label(),
            policy_version: policy.version(),
            started_ms,
            duration_ms: now_ms().saturating_sub(started_ms),
            stopped_at: stop.map(|s| s.checkpoint_tokens),
            delivered_tokens: delivered,
            complete,
            audit: false,
        };
        let trace_head = TraceHead {
            id: head.id.clone(),
            dataset: sink.route.clone(),
            question: sink.question.clone().filter(|_| sink.store_text),
            gold: Vec::new(),
            model: sink.model.clone(),
            prompt_tokens: self.prompt_tokens.unwrap_or(0),
            probe: sink.probe.clone(),
            served: Some(served),
        };
        let mut text = self.partial();
        if let Some(stop) = stop {
            text.push_str(&stop.forced);
        }
        let ending = Ending {
            tokens,
            text,
            answer: stop.map(|s| s.answer.clone()),
            finish_reason: finish_reason.to_owned(),
            keep_text: sink.store_text,
        };
        if let Some(job) = sink.audit.take() {
            self.audit = Some((job, trace_head.clone(), self.recorder.task()));
        }
        // A copy: the last chunk, written after this, still reads the token count.
        match self.recorder.clone().finish(trace_head, ending) {
            Ok(trace) => {
                sink.writer.submit(trace);
            }
            Err(e) => tracing::warn!("response {}: no trace recorded: {e}", head.id),
        }
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

pub fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A chunk id unique within this process and unlikely to repeat across restarts.
pub fn new_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("chatcmpl-sw{:x}{:x}", nanos as u64, COUNTER.fetch_add(1, Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use stopwise_core::rules::budget::Budget;
    use stopwise_core::rules::consistency::Consistency;
    use stopwise_engine::{EventSender, RequestHandle};

    use super::*;

    /// A session state on an engine route (interval 32, at most 3 probes), and the engine's side
    /// of its requests.
    fn engine_state(policy: PolicySpec) -> (State, EventSender) {
        let (events, handle) = RequestHandle::channel();
        let plan = StopPlan {
            policy,
            task: Task::Numeric,
            interval: 32,
            answer_template: "{answer}".into(),
            reasoning_open: String::new(),
            reasoning_close: String::new(),
            max_tokens: None,
            max_probes: 3,
            stop: Vec::new(),
            probes: Probes::Engine(handle.probe_requester()),
        };
        let meter = Meter::start("test", Endpoint::Chat, Instant::now());
        (State::new(Endpoint::Chat, Some(plan), meter), events)
    }

    /// Feeds single-token chunks up to `tokens` in all, as `run` does.
    fn generate_until(state: &mut State, tokens: u32) {
        while state.tokens() < tokens {
            state.add("x", "", 1, Some(-0.1), Some(0.1));
            assert!(state.due_probe().is_none(), "an engine probe is asked for, never launched");
        }
    }

    fn probe_at(after_tokens: u32) -> ProbeOutcome {
        ProbeOutcome {
            after_tokens,
            text: "72".into(),
            answer_tokens: 2,
            mean_prob: 0.9,
            min_prob: 0.8,
            prompt_tokens: None,
            completion_tokens: 2,
        }
    }

    #[test]
    fn a_budget_asks_the_engine_for_one_probe_at_its_limit() {
        let (mut state, engine) = engine_state(Budget { max_tokens: 40 }.into());
        generate_until(&mut state, 63);
        assert_eq!(engine.probe_wanted_at(), None, "the checkpoint at 32 needs no answer");
        generate_until(&mut state, 64);
        assert_eq!(engine.probe_wanted_at(), Some(64));
        // The engine ran two tokens ahead before it saw the request.
        generate_until(&mut state, 66);
        let frames = state.observe(probe_at(66)).expect("the budget stops");
        let Some(Frame::Data(last)) = frames.get(1) else { panic!("no final chunk") };
        let last: Value = serde_json::from_str(last).unwrap();
        assert_eq!(last["stopwise"]["probes"], 1);
        assert_eq!(last["stopwise"]["checkpoint_tokens"], 66);
        assert_eq!(last["stopwise"]["probe_completion_tokens"], 2);
    }

    #[test]
    fn an_engine_probe_missing_at_the_next_checkpoint_is_given_up() {
        let spec: PolicySpec = Consistency { window: 2, min_tokens: 0, hedge_filter: false }.into();
        let (mut state, engine) = engine_state(spec);
        generate_until(&mut state, 32);
        assert_eq!(engine.probe_wanted_at(), Some(32));
        // No probe by 64 (say the context had no room): the next checkpoint is asked for anyway.
        generate_until(&mut state, 64);
        assert_eq!(engine.probe_wanted_at(), Some(64));
        assert!(state.observe(probe_at(64)).is_none(), "one answer is no run of two");
        assert!(state.pending.is_none());
        // A probe nobody waits for any more is paid for but decides nothing.
        generate_until(&mut state, 70);
        assert!(state.observe(probe_at(70)).is_none());
        assert_eq!((state.probes, state.probe_completion_tokens), (2, 4));
        generate_until(&mut state, 96);
        assert!(state.observe(probe_at(96)).is_some(), "two equal answers in a row stop");
    }

    #[test]
    fn no_probe_is_asked_for_beyond_the_limit() {
        // Answers that never repeat: the rule wants a probe at every checkpoint.
        let spec: PolicySpec = Consistency { window: 2, min_tokens: 0, hedge_filter: false }.into();
        let (mut state, engine) = engine_state(spec);
        for (i, at) in [32, 64, 96].into_iter().enumerate() {
            generate_until(&mut state, at);
            assert_eq!(engine.probe_wanted_at(), Some(at));
            let mut outcome = probe_at(at);
            outcome.text = format!("{i}");
            assert!(state.observe(outcome).is_none());
        }
        generate_until(&mut state, 160);
        assert_eq!(engine.probe_wanted_at(), Some(96), "a fourth probe was asked for");
        assert_eq!(state.asked, 3);
    }
}
