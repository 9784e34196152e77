//! Embedded backend: llama.cpp (through `llama-cpp-2`) running a GGUF model on this machine.
//!
//! A llama.cpp context cannot be shared between threads, so one worker thread owns it and runs the
//! scheduling loop. Each step advances every active request by one piece of work (a prompt chunk
//! while prefilling, the pending sampled token while generating, the probe suffix or the next
//! greedy probe token while probing): the single tokens of all requests share one `decode` call,
//! a multi-token piece gets a call of its own (see `Scheduler::step` for why), and each request's
//! state machine then advances with its logits. Requests are llama.cpp sequences `0..parallel`;
//! waiting requests are admitted as sequences free up.
//!
//! Outputs do not depend on the other requests in flight: every sequence goes through the same
//! kernels alone as in a batch, so a request gives bit-identical tokens and log-probs whatever
//! the traffic (checked by the integration tests).
//!
//! Probes are transparent: after real token t_N is decoded, t_{N+1} is sampled from its logits
//! *before* the probe and kept pending; the probe decodes the suffix and its greedy tokens at the
//! positions after t_N, then those positions are removed from the KV cache and generation resumes
//! by decoding t_{N+1}. The request's sampler and RNG never see probe logits, so the output is
//! the same with and without probes, wherever they are taken. A probe asked for through a
//! `ProbeRequester` is taken at the first such boundary the worker reaches after the request.

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread::JoinHandle;

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::{send_logs_to_tracing, LogOptions};
use llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_DISABLED;

use crate::sampling::{greedy_with_prob, logprob_and_entropy, Sampler};
use crate::text::TextStream;
use crate::{
    ChatMessage, Engine, EngineError, Event, EventSender, FinishReason, ProbeTrigger, Prompt, Request, RequestHandle,
};

/// Longest probe suffix accepted, in tokens (a suffix is decoded in one call).
const MAX_SUFFIX_TOKENS: usize = 256;
/// Most tokens in one decode call; longer prompts are prefilled in chunks of this size.
const BATCH_TOKENS: usize = 512;
/// llama.cpp's limit on sequences in one context.
const MAX_PARALLEL: u32 = 256;

/// How to load and run the embedded engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LlamaConfig {
    pub model_path: PathBuf,
    /// Context of each sequence (prompt + generated tokens + probe), in tokens.
    pub n_ctx_per_seq: u32,
    /// Sequences decoded together in one batch (concurrent requests).
    pub parallel: u32,
    /// CPU threads for llama.cpp.
    pub threads: u32,
    /// Requests allowed to wait for a free sequence; beyond that `submit` answers `Busy`.
    pub queue_limit: usize,
    /// Prepended as a `system` message to chat prompts that have none.
    pub system_prompt: Option<String>,
}

impl LlamaConfig {
    /// Defaults: 2048 tokens per sequence, 4 parallel sequences, all cores, 64 waiting requests.
    pub fn new(model_path: impl Into<PathBuf>) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |cores| cores.get());
        Self {
            model_path: model_path.into(),
            n_ctx_per_seq: 2048,
            parallel: 4,
            threads: u32::try_from(cores).unwrap_or(1),
            queue_limit: 64,
            system_prompt: None,
        }
    }
}

/// The process-wide llama.cpp backend. llama.cpp may be initialised only once per process, so
/// every user in the process (engines, benchmarks) shares this one.
pub fn llama_backend() -> Result<&'static LlamaBackend, EngineError> {
    static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            // llama.cpp logs every tensor at load time; through tracing they stay quiet unless a
            // subscriber asks for them.
            send_logs_to_tracing(LogOptions::default());
            LlamaBackend::init().map_err(|err| err.to_string())
        })
        .as_ref()
        .map_err(|err| EngineError::Load(format!("llama.cpp backend: {err}")))
}

/// A snapshot of the engine's load, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineStats {
    /// Requests waiting for a free sequence.
    pub waiting: usize,
    /// Requests running in a sequence.
    pub active: usize,
    /// Requests cancelled because their handle was dropped, since the engine started.
    pub cancelled: u64,
}

/// The embedded engine. Dropping it stops the worker; requests still running get an `Error`.
pub struct LlamaEngine {
    model: Arc<LlamaModel>,
    model_name: String,
    chat_template: Option<LlamaChatTemplate>,
    system_prompt: Option<String>,
    n_ctx_per_seq: u32,
    parallel: u32,
    shared: Arc<Shared>,
    worker: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for LlamaEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlamaEngine")
            .field("model_name", &self.model_name)
            .field("n_ctx_per_seq", &self.n_ctx_per_seq)
            .field("parallel", &self.parallel)
            .finish_non_exhaustive()
    }
}

impl LlamaEngine {
    /// Loads the model and starts the worker thread.
    pub fn load(config: LlamaConfig) -> Result<Self, EngineError> {
        if config.parallel == 0 || config.parallel > MAX_PARALLEL || config.threads == 0 {
            return Err(EngineError::Load(format!("parallel must be 1 to {MAX_PARALLEL} and threads at least 1")));
        }
        if config.n_ctx_per_seq < 16 {
            return Err(EngineError::Load("n_ctx_per_seq must be at least 16 tokens".into()));
        }
        let total_ctx = config
            .n_ctx_per_seq
            .checked_mul(config.parallel)
            .and_then(NonZeroU32::new)
            .ok_or_else(|| EngineError::Load("n_ctx_per_seq × parallel overflows".into()))?;
        if !config.model_path.is_file() {
            return Err(EngineError::Load(format!(
                "model file {} does not exist; run `stopwise model fetch` or pass an existing .gguf file",
                config.model_path.display()
            )));
        }
        let backend = llama_backend()?;
        let model = LlamaModel::load_from_file(backend, &config.model_path, &LlamaModelParams::default())
            .map_err(|err| EngineError::Load(format!("cannot load {}: {err}", config.model_path.display())))?;
        let model = Arc::new(model);
        let model_name = config
            .model_path
            .file_name()
            .map(|name| name.to_string_lossy())
            .map(|name| name.strip_suffix(".gguf").unwrap_or(&name).to_string())
            .unwrap_or_else(|| "model".to_string());
        // Models without a template can still serve raw prompts.
        let chat_template = model.chat_template(None).ok();

        let threads = i32::try_from(config.threads).unwrap_or(i32::MAX);
        let batch_tokens = BATCH_TOKENS.max(config.parallel as usize);
        let batch_tokens_u32 = u32::try_from(batch_tokens).unwrap_or(u32::MAX);
        let context_params = LlamaContextParams::default()
            .with_n_ctx(Some(total_ctx))
            .with_n_batch(batch_tokens_u32)
            .with_n_ubatch(batch_tokens_u32)
            .with_n_seq_max(config.parallel)
            .with_n_threads(threads)
            .with_n_threads_batch(threads)
            // llama.cpp's CPU flash attention switches kernels with the number of sequences in a
            // micro-batch and with the KV length, so a request's logits would depend on the other
            // requests running; plain attention computes each sequence the same way in any batch.
            .with_flash_attention_policy(LLAMA_FLASH_ATTN_TYPE_DISABLED);

        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue { waiting: VecDeque::new(), shutdown: false, worker_running: true }),
            wakeup: Condvar::new(),
            queue_limit: config.queue_limit,
            active: AtomicUsize::new(0),
            cancelled: AtomicU64::new(0),
        });
        let (ready_sender, ready) = mpsc::channel();
        let worker = {
            let model = Arc::clone(&model);
            let shared = Arc::clone(&shared);
            let settings =
                WorkerSettings { parallel: config.parallel, n_ctx_per_seq: config.n_ctx_per_seq, batch_tokens };
            std::thread::Builder::new()
                .name("stopwise-llama".into())
                .spawn(move || run_worker(&model, context_params, settings, shared, ready_sender))
                .map_err(|err| EngineError::Load(format!("cannot start worker thread: {err}")))?
        };
        let n_ctx_per_seq = match ready.recv() {
            Ok(Ok(n_ctx_per_seq)) => n_ctx_per_seq,
            Ok(Err(message)) => {
                let _ = worker.join();
                return Err(EngineError::Load(message));
            }
            Err(_) => {
                let _ = worker.join();
                return Err(EngineError::Load("worker thread exited during start-up".into()));
            }
        };
        tracing::info!(model = %model_name, n_ctx_per_seq, parallel = config.parallel, "engine loaded");
        Ok(Self {
            model,
            model_name,
            chat_template,
            system_prompt: config.system_prompt,
            n_ctx_per_seq,
            parallel: config.parallel,
            shared,
            worker: Some(worker),
        })
    }

    /// Tokens a sequence holds: prompt, generated tokens and a probe must fit in it.
    pub fn n_ctx_per_seq(&self) -> u32 {
        self.n_ctx_per_seq
    }

    /// Number of requests decoded together.
    pub fn parallel(&self) -> u32 {
        self.parallel
    }

    fn prompt_tokens(&self, prompt: &Prompt) -> Result<Vec<LlamaToken>, EngineError> {
        let text = match prompt {
            Prompt::Chat(messages) => self.render_chat(messages)?,
            Prompt::Raw(text) => text.clone(),
        };
        Ok(self.model.vocab().tokenize(text.as_bytes(), true, true))
    }

    fn render_chat(&self, messages: &[ChatMessage]) -> Result<String, EngineError> {
        let invalid = |why: String| EngineError::InvalidRequest(why);
        let template = self
            .chat_template
            .as_ref()
            .ok_or_else(|| invalid("the model has no chat template; send a raw prompt instead".into()))?;
        if messages.is_empty() {
            return Err(invalid("chat prompt has no messages".into()));
        }
        let mut chat = Vec::with_capacity(messages.len() + 1);
        if let Some(system) = &self.system_prompt {
            if !messages.iter().any(|message| message.role == "system") {
                chat.push(("system".to_string(), system.clone()));
            }
        }
        chat.extend(messages.iter().map(|message| (message.role.clone(), message.content.clone())));
        let chat = chat
            .into_iter()
            .map(|(role, content)| LlamaChatMessage::new(role, content))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| invalid(format!("chat message: {err}")))?;
        self.model
            .apply_chat_template(template, &chat, true)
            .map_err(|err| invalid(format!("cannot apply the chat template: {err}")))
    }

    fn lock_queue(&self) -> MutexGuard<'_, Queue> {
        self.shared.lock()
    }
}

impl Engine for LlamaEngine {
    fn model_name(&self) -> &str {
        &self.model_name
    }

    fn stats(&self) -> EngineStats {
        EngineStats {
            waiting: self.lock_queue().waiting.len(),
            active: self.shared.active.load(Ordering::Relaxed),
            cancelled: self.shared.cancelled.load(Ordering::Relaxed),
        }
    }

    fn submit(&self, request: Request) -> Result<RequestHandle, EngineError> {
        request.validate()?;
        let prompt = self.prompt_tokens(&request.prompt)?;
        if prompt.is_empty() {
            return Err(EngineError::InvalidRequest("the prompt is empty".into()));
        }
        let limit = self.n_ctx_per_seq as usize;
        if prompt.len() >= limit {
            return Err(EngineError::PromptTooLong { prompt_tokens: prompt.len(), limit: limit - 1 });
        }
        let probe = match &request.probe {
            None => None,
            Some(plan) => {
                let suffix = self.model.vocab().tokenize(plan.suffix.as_bytes(), false, true);
                if suffix.is_empty() || suffix.len() > MAX_SUFFIX_TOKENS {
                    return Err(EngineError::InvalidRequest(format!(
                        "probe suffix must be 1 to {MAX_SUFFIX_TOKENS} tokens, it is {}",
                        suffix.len()
                    )));
                }
                Some(ProbeSpec { suffix, max_tokens: plan.max_tokens, trigger: plan.trigger })
            }
        };
        let (events, handle) = RequestHandle::channel();
        let job = Job {
            events,
            prompt,
            max_tokens: request.max_tokens,
            sampler: Sampler::new(request.sampling),
            text: TextStream::new(request.stop),
            probe,
        };
        let mut queue = self.lock_queue();
        if !queue.worker_running {
            return Err(EngineError::Stopped);
        }
        if queue.waiting.len() >= self.shared.queue_limit {
            return Err(EngineError::Busy { queue_limit: self.shared.queue_limit });
        }
        queue.waiting.push_back(job);
        drop(queue);
        self.shared.wakeup.notify_one();
        Ok(handle)
    }
}

impl Drop for LlamaEngine {
    fn drop(&mut self) {
        self.lock_queue().shutdown = true;
        self.shared.wakeup.notify_all();
        if let Some(worker) = self.worker.take() {
            if worker.join().is_err() {
                tracing::error!("llama worker thread panicked");
            }
        }
    }
}

/// State shared by the engine handle (submitters) and the worker.
struct Shared {
    queue: Mutex<Queue>,
    wakeup: Condvar,
    queue_limit: usize,
    active: AtomicUsize,
    cancelled: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // The queue stays consistent even if a holder panicked: every update is a single push/pop.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

struct Queue {
    waiting: VecDeque<Job>,
    shutdown: bool,
    worker_running: bool,
}

/// A tokenised request waiting for a sequence.
struct Job {
    events: EventSender,
    prompt: Vec<LlamaToken>,
    max_tokens: u32,
    sampler: Sampler,
    text: TextStream,
    probe: Option<ProbeSpec>,
}

struct ProbeSpec {
    suffix: Vec<LlamaToken>,
    max_tokens: u32,
    trigger: ProbeTrigger,
}

#[derive(Clone, Copy)]
struct WorkerSettings {
    parallel: u32,
    n_ctx_per_seq: u32,
    batch_tokens: usize,
}

/// Marks the worker as gone (even when it panics) and fails the requests still waiting.
struct WorkerExitGuard(Arc<Shared>);

impl Drop for WorkerExitGuard {
    fn drop(&mut self) {
        let mut queue = self.0.lock();
        queue.worker_running = false;
        for job in queue.waiting.drain(..) {
            job.events.send(Event::Error("the engine stopped before this request started".into()));
        }
    }
}

fn run_worker(
    model: &LlamaModel,
    context_params: LlamaContextParams,
    settings: WorkerSettings,
    shared: Arc<Shared>,
    ready: mpsc::Sender<Result<u32, String>>,
) {
    let _exit_guard = WorkerExitGuard(Arc::clone(&shared));
    let context = llama_backend().and_then(|backend| {
        model
            .new_context(backend, context_params)
            .map_err(|err| EngineError::Load(format!("cannot create the llama.cpp context: {err}")))
    });
    let context = match context {
        Ok(context) => context,
        Err(err) => {
            let _ = ready.send(Err(err.to_string()));
            return;
        }
    };
    // llama.cpp rounds the per-sequence context up; never promise more than was asked for.
    let n_ctx_per_seq = settings.n_ctx_per_seq.min(context.n_ctx() / settings.parallel);
    if ready.send(Ok(n_ctx_per_seq)).is_err() {
        return;
    }
    let mut scheduler = Scheduler {
        context,
        model,
        slots: (0..settings.parallel).map(|_| None).collect(),
        batch: LlamaBatch::new(settings.batch_tokens, 1),
        batch_tokens: settings.batch_tokens,
        n_ctx_per_seq,
        shared,
    };
    scheduler.run();
}

/// The worker's state: the context and the request running in each sequence.
struct Scheduler<'model> {
    context: LlamaContext<'model>,
    model: &'model LlamaModel,
    /// Index = llama.cpp sequence id.
    slots: Vec<Option<Sequence>>,
    batch: LlamaBatch<'static>,
    batch_tokens: usize,
    n_ctx_per_seq: u32,
    shared: Arc<Shared>,
}

/// What one sequence put into the current batch.
struct Scheduled {
    seq: usize,
    tokens: usize,
    logits_index: Option<i32>,
}

impl Scheduler<'_> {
    fn run(&mut self) {
        while self.admit_waiting() {
            self.cancel_dropped();
            self.step();
            let active = self.slots.iter().filter(|slot| slot.is_some()).count();
            self.shared.active.store(active, Ordering::Relaxed);
        }
        for seq in 0..self.slots.len() {
            if let Some(sequence) = self.slots[seq].take() {
                sequence.events.send(Event::Error("the engine was shut down".into()));
            }
            self.clear_sequence(seq);
        }
    }

    /// Fills free sequences from the queue; blocks while there is nothing to do. `false` = shut down.
    fn admit_waiting(&mut self) -> bool {
        let shared = Arc::clone(&self.shared);
        let mut queue = shared.lock();
        loop {
            if queue.shutdown {
                return false;
            }
            for seq in 0..self.slots.len() {
                if self.slots[seq].is_some() {
                    continue;
                }
                while let Some(job) = queue.waiting.pop_front() {
                    if self.start(seq, job) {
                        break;
                    }
                }
            }
            if self.slots.iter().any(Option::is_some) {
                return true;
            }
            queue = shared.wakeup.wait(queue).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Starts `job` in sequence `seq`; `false` if it ended at once (cancelled or nothing to generate).
    fn start(&mut self, seq: usize, job: Job) -> bool {
        let prompt_tokens = u32::try_from(job.prompt.len()).unwrap_or(u32::MAX);
        if !job.events.send(Event::Started { prompt_tokens }) {
            self.shared.cancelled.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        if job.max_tokens == 0 {
            job.events.send(Event::Done { finish_reason: FinishReason::Length, completion_tokens: 0 });
            return false;
        }
        tracing::debug!(seq, prompt_tokens, "request started");
        self.slots[seq] = Some(Sequence {
            events: job.events,
            prompt: job.prompt,
            n_past: 0,
            phase: Phase::Prefill { next: 0 },
            sampler: job.sampler,
            text: job.text,
            generated: 0,
            last_probe: 0,
            max_tokens: job.max_tokens,
            probe: job.probe,
            n_ctx: self.n_ctx_per_seq,
        });
        true
    }

    fn cancel_dropped(&mut self) {
        for seq in 0..self.slots.len() {
            let dropped = self.slots[seq].as_ref().is_some_and(|sequence| sequence.events.is_closed());
            if dropped {
                self.cancel(seq);
            }
        }
    }

    fn cancel(&mut self, seq: usize) {
        tracing::debug!(seq, "request cancelled");
        self.shared.cancelled.fetch_add(1, Ordering::Relaxed);
        self.slots[seq] = None;
        self.clear_sequence(seq);
    }

    /// Ends the request in `seq` with an error and frees the sequence.
    fn fail(&mut self, seq: usize, message: &str) {
        tracing::error!(seq, message, "request failed");
        if let Some(sequence) = self.slots[seq].take() {
            sequence.events.send(Event::Error(message.to_string()));
        }
        self.clear_sequence(seq);
    }

    fn clear_sequence(&mut self, seq: usize) {
        self.remove_from_cache(seq, None);
    }

    /// Removes positions `from..` (everything with `None`) of `seq` from the KV cache.
    fn remove_from_cache(&mut self, seq: usize, from: Option<u32>) {
        let removed = u32::try_from(seq)
            .map_err(|err| err.to_string())
            .and_then(|seq| self.context.clear_kv_cache_seq(Some(seq), from, None).map_err(|err| err.to_string()));
        if !matches!(removed, Ok(true)) {
            tracing::error!(seq, ?from, ?removed, "KV cache removal failed");
        }
    }

    /// One scheduling step: every active sequence advances by one piece of work.
    ///
    /// The single tokens of all sequences (generation and greedy probe tokens) share one decode;
    /// each multi-token piece (a prompt chunk or a probe suffix) gets a decode of its own. llama.cpp
    /// splits a multi-sequence batch into micro-batches with the same token count per sequence,
    /// and its CPU kernels pick different code paths (with different rounding) for 1 and for
    /// several tokens per sequence; mixing a prompt with other sequences' single tokens would
    /// change that prompt's logits with the traffic around it. Kept apart, every sequence sees the
    /// same computation alone as in any batch, so outputs do not depend on concurrency.
    fn step(&mut self) {
        let mut single = Vec::with_capacity(self.slots.len());
        let mut multi = Vec::new();
        for (seq, slot) in self.slots.iter().enumerate() {
            match slot {
                Some(sequence) if sequence.wants_single_token() => single.push(seq),
                Some(_) => multi.push(seq),
                None => {}
            }
        }
        if !single.is_empty() {
            self.decode_and_advance(&single);
        }
        for seq in multi {
            self.decode_and_advance(&[seq]);
        }
    }

    /// Decodes the next work of `seqs` in one batch and advances them with the logits.
    fn decode_and_advance(&mut self, seqs: &[usize]) {
        self.batch.clear();
        let mut scheduled: Vec<Scheduled> = Vec::with_capacity(seqs.len());
        for &seq in seqs {
            let Some(sequence) = self.slots.get(seq).and_then(Option::as_ref) else {
                continue;
            };
            let Some((tokens, first_pos, ends_with_logits)) = sequence.work(self.batch_tokens) else {
                continue;
            };
            let n_tokens = tokens.len();
            match add_to_batch(&mut self.batch, tokens, first_pos, seq, ends_with_logits) {
                Ok(logits_index) => scheduled.push(Scheduled { seq, tokens: n_tokens, logits_index }),
                // Not reachable by construction (work never exceeds the batch); if it were, fail
                // this request and drop the half-filled batch: the others retry next step.
                Err(message) => {
                    self.fail(seq, &format!("cannot fill the batch: {message}"));
                    return;
                }
            }
        }
        if scheduled.is_empty() {
            return;
        }

        if let Err(err) = self.context.decode(&mut self.batch) {
            for item in &scheduled {
                self.fail(item.seq, &format!("llama.cpp decode failed: {err}"));
            }
            return;
        }

        for item in scheduled {
            let outcome = {
                let logits = item.logits_index.map(|index| self.context.get_logits_ith(index));
                match self.slots[item.seq].as_mut() {
                    Some(sequence) => sequence.advance(item.tokens, logits, self.model),
                    None => Outcome::Finished,
                }
            };
            match outcome {
                Outcome::Continue => {}
                Outcome::RollBack { from } => self.remove_from_cache(item.seq, Some(from)),
                Outcome::Finished => {
                    self.slots[item.seq] = None;
                    self.clear_sequence(item.seq);
                }
                Outcome::Cancelled => self.cancel(item.seq),
            }
        }
    }
}

/// Adds `tokens` at consecutive positions from `first_pos`; returns the batch index that will
/// hold logits when `ends_with_logits`.
fn add_to_batch(
    batch: &mut LlamaBatch<'static>,
    tokens: &[LlamaToken],
    first_pos: u32,
    seq: usize,
    ends_with_logits: bool,
) -> Result<Option<i32>, String> {
    let seq_id = i32::try_from(seq).map_err(|err| err.to_string())?;
    let first_pos = i32::try_from(first_pos).map_err(|err| err.to_string())?;
    for (pos, (offset, &token)) in (first_pos..).zip(tokens.iter().enumerate()) {
        let logits = ends_with_logits && offset + 1 == tokens.len();
        batch.add(token, pos, &[seq_id], logits).map_err(|err| err.to_string())?;
    }
    Ok(ends_with_logits.then(|| batch.n_tokens() - 1))
}

/// What a sequence needs after a decode.
enum Outcome {
    Continue,
    /// A probe ended: drop its positions `from..` from the KV cache.
    RollBack {
        from: u32,
    },
    /// The request is over (finished or failed): free the sequence.
    Finished,
    /// The handle was dropped: free the sequence.
    Cancelled,
}

/// A sampled real token with the statistics recorded for it.
#[derive(Clone, Copy)]
struct Sampled {
    token: LlamaToken,
    logprob: f32,
    entropy: f32,
}

enum Phase {
    /// Prompt tokens from `next` on are still to be decoded.
    Prefill {
        next: usize,
    },
    /// `token` was sampled and emitted; it is decoded at position `n_past` next.
    Generate {
        token: LlamaToken,
    },
    Probe(ProbeRun),
}

/// A probe in progress.
struct ProbeRun {
    /// The real token sampled before the probe; emitted when the probe ends.
    pending: Sampled,
    /// First probe position (= `n_past`): everything from here is rolled back.
    rollback_from: u32,
    /// Position of the next token to decode.
    next_pos: u32,
    suffix_decoded: bool,
    /// Greedy token to decode next (valid once the suffix is decoded).
    last_token: LlamaToken,
    answer: Vec<u8>,
    tokens: u32,
    prob_sum: f64,
    min_prob: f32,
}

/// One request running in a sequence.
struct Sequence {
    events: EventSender,
    prompt: Vec<LlamaToken>,
    /// Real tokens (prompt + generated) in the KV cache.
    n_past: u32,
    phase: Phase,
    sampler: Sampler,
    text: TextStream,
    /// Token events sent so far.
    generated: u32,
    /// `generated` when the last probe was taken (0: none yet).
    last_probe: u32,
    max_tokens: u32,
    probe: Option<ProbeSpec>,
    n_ctx: u32,
}

impl Sequence {
    /// Whether the next work is one token (generation, greedy probe token) rather than several
    /// (prompt chunk, probe suffix).
    fn wants_single_token(&self) -> bool {
        match &self.phase {
            Phase::Generate { .. } => true,
            Phase::Probe(run) => run.suffix_decoded,
            Phase::Prefill { .. } => false,
        }
    }

    /// The next work, at most `budget` tokens: (tokens, position of the first, whether the last
    /// needs logits).
    fn work(&self, budget: usize) -> Option<(&[LlamaToken], u32, bool)> {
        match &self.phase {
            Phase::Generate { token } => Some((std::slice::from_ref(token), self.n_past, true)),
            Phase::Probe(run) if run.suffix_decoded => {
                Some((std::slice::from_ref(&run.last_token), run.next_pos, true))
            }
            Phase::Probe(run) => {
                let suffix = self.probe.as_ref()?.suffix.as_slice();
                (suffix.len() <= budget).then_some((suffix, run.next_pos, true))
            }
            Phase::Prefill { next } => {
                let rest = self.prompt.get(*next..)?;
                let mut chunk_len = rest.len().min(budget);
                // Never leave a 1-token tail: llama.cpp computes a lone token through other
                // kernels than a group of tokens (see `Scheduler::step`).
                if rest.len() - chunk_len == 1 && chunk_len > 2 {
                    chunk_len -= 1;
                }
                let first_pos = u32::try_from(*next).ok()?;
                Some((&rest[..chunk_len], first_pos, chunk_len == rest.len()))
            }
        }
    }

    /// Advances after a decode in which this sequence had `decoded` tokens.
    fn advance(&mut self, decoded: usize, logits: Option<&[f32]>, model: &LlamaModel) -> Outcome {
        let decoded_u32 = u32::try_from(decoded).unwrap_or(u32::MAX);
        match &mut self.phase {
            Phase::Prefill { next } => {
                *next += decoded;
                if *next < self.prompt.len() {
                    return Outcome::Continue;
                }
                self.n_past = u32::try_from(self.prompt.len()).unwrap_or(u32::MAX);
            }
            Phase::Generate { .. } => self.n_past += 1,
            Phase::Probe(run) => {
                run.next_pos += decoded_u32;
                run.suffix_decoded = true;
            }
        }
        let Some(logits) = logits else {
            return self.fail("internal error: no logits after a decode that needed them");
        };
        if matches!(self.phase, Phase::Probe(_)) {
            self.on_probe_logits(logits, model)
        } else {
            self.on_real_logits(logits, model)
        }
    }

    /// Logits after the last real token: sample the next one, then probe first if one is due.
    fn on_real_logits(&mut self, logits: &[f32], model: &LlamaModel) -> Outcome {
        let index = self.sampler.sample(logits);
        let (logprob, entropy) = logprob_and_entropy(logits, index);
        let sampled = Sampled { token: LlamaToken(i32::try_from(index).unwrap_or(0)), logprob, entropy };
        if self.probe_due() {
            self.last_probe = self.generated;
            self.phase = Phase::Probe(ProbeRun {
                pending: sampled,
                rollback_from: self.n_past,
                next_pos: self.n_past,
                suffix_decoded: false,
                last_token: sampled.token,
                answer: Vec::new(),
                tokens: 0,
                prob_sum: 0.0,
                min_prob: 1.0,
            });
            return Outcome::Continue;
        }
        self.accept(sampled, model)
    }

    /// A probe is due after every `n` generated tokens, or once the caller's latest request point
    /// is reached and no probe was taken since, if it fits in the context.
    fn probe_due(&self) -> bool {
        let Some(probe) = &self.probe else {
            return false;
        };
        let fits = u64::from(self.n_past) + probe.suffix.len() as u64 + u64::from(probe.max_tokens) - 1
            <= u64::from(self.n_ctx);
        let asked = match probe.trigger {
            ProbeTrigger::Every(interval) => self.generated.checked_rem(interval) == Some(0),
            ProbeTrigger::OnRequest => {
                self.events.probe_wanted_at().is_some_and(|at| self.generated >= at && self.last_probe < at)
            }
        };
        self.generated > 0 && asked && fits
    }

    /// Emits a sampled real token and decides whether generation goes on.
    fn accept(&mut self, sampled: Sampled, model: &LlamaModel) -> Outcome {
        self.generated += 1;
        let vocab = model.vocab();
        let token_event = |text| Event::Token { text, logprob: sampled.logprob, entropy: sampled.entropy };
        if vocab.is_eog(sampled.token) {
            let text = self.text.finish();
            return self.finish(token_event(text), FinishReason::Stop);
        }
        let released = self.text.push(&vocab.token_to_piece(sampled.token, false, None));
        if released.stopped {
            return self.finish(token_event(released.text), FinishReason::Stop);
        }
        // The token would be decoded at position n_past: it needs a free position.
        if self.generated >= self.max_tokens || self.n_past >= self.n_ctx {
            let mut text = released.text;
            text.push_str(&self.text.finish());
            return self.finish(token_event(text), FinishReason::Length);
        }
        if !self.events.send(token_event(released.text)) {
            return Outcome::Cancelled;
        }
        self.phase = Phase::Generate { token: sampled.token };
        Outcome::Continue
    }

    /// Logits inside a probe: take the greedy token, and end the probe at EOG, at the end of the
    /// first non-blank line or at the probe's token limit.
    fn on_probe_logits(&mut self, logits: &[f32], model: &LlamaModel) -> Outcome {
        let (max_tokens, Phase::Probe(run)) =
            (self.probe.as_ref().map_or(0, |probe| probe.max_tokens), &mut self.phase)
        else {
            return self.fail("internal error: probe logits outside a probe");
        };
        let (index, prob) = greedy_with_prob(logits);
        let token = LlamaToken(i32::try_from(index).unwrap_or(0));
        let vocab = model.vocab();
        let mut ended = vocab.is_eog(token);
        if !ended {
            let piece = vocab.token_to_piece(token, false, None);
            let (answer_part, ends_line) = match piece.iter().position(|&byte| byte == b'\n') {
                Some(newline) if has_visible_text(&run.answer) || has_visible_text(&piece[..newline]) => {
                    (&piece[..newline], true)
                }
                _ => (piece.as_slice(), false),
            };
            // A bare newline that ends the answer is a terminator, not part of the answer.
            if !(ends_line && answer_part.is_empty()) {
                run.answer.extend_from_slice(answer_part);
                run.tokens += 1;
                run.prob_sum += f64::from(prob);
                run.min_prob = run.min_prob.min(prob);
            }
            run.last_token = token;
            ended = ends_line || run.tokens >= max_tokens;
        }
        if !ended {
            return Outcome::Continue;
        }

        let (pending, rollback_from, probe_event) = {
            let mean_prob = if run.tokens == 0 { 0.0 } else { (run.prob_sum / f64::from(run.tokens)) as f32 };
            let event = Event::Probe {
                after_tokens: self.generated,
                text: String::from_utf8_lossy(&run.answer).into_owned(),
                tokens: run.tokens,
                mean_prob,
                min_prob: if run.tokens == 0 { 0.0 } else { run.min_prob },
            };
            (run.pending, run.rollback_from, event)
        };
        if !self.events.send(probe_event) {
            return Outcome::Cancelled;
        }
        match self.accept(pending, model) {
            Outcome::Continue | Outcome::RollBack { .. } => Outcome::RollBack { from: rollback_from },
            ended @ (Outcome::Finished | Outcome::Cancelled) => ended,
        }
    }

    fn finish(&mut self, last_token: Event, finish_reason: FinishReason) -> Outcome {
        let delivered = self.events.send(last_token)
            && self.events.send(Event::Done { finish_reason, completion_tokens: self.generated });
        if delivered {
            Outcome::Finished
        } else {
            Outcome::Cancelled
        }
    }

    fn fail(&mut self, message: &str) -> Outcome {
        tracing::error!(message, "request failed");
        self.events.send(Event::Error(message.to_string()));
        Outcome::Finished
    }
}

fn has_visible_text(bytes: &[u8]) -> bool {
    bytes.iter().any(|byte| !byte.is_ascii_whitespace())
}
