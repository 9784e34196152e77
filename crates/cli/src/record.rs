//! `stopwise run`: full runs of a dataset on an engine, with a probe every interval, written as
//! trace v1. Resumable: ids already in the output file are skipped.

use std::collections::VecDeque;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use stopwise_core::answer::{self, Task};
use stopwise_core::recorder::TraceHead;
use stopwise_core::trace::{ProbeSettings, Trace};
use stopwise_engine::record::{EventRecorder, Step};
use stopwise_engine::{ChatMessage, Engine, ProbePlan, ProbeTrigger, Prompt, Request, RequestHandle, Sampling};
use stopwise_store::{recorded_ids, TraceWriter};

use crate::dataset::Item;

/// The short explicit system prompt each task gets by default: small models need it.
pub fn default_system_prompt(task: Task) -> &'static str {
    match task {
        Task::Numeric => "You are a careful math tutor. Solve the problem step by step in a few short sentences, then write the final answer on its own line as 'Final answer: <number>'.",
        Task::Math => "You are a careful math tutor. Solve the problem step by step, then write the final answer as 'Final answer: $<answer>$'.",
        Task::Text => "Answer the question. Think briefly, then write 'Final answer: <short answer>' with just a few words.",
    }
}

pub const DEFAULT_PROBE_SUFFIX: &str = "\n\nFinal answer: ";

pub struct RecordSettings {
    pub dataset_name: String,
    pub task: Task,
    pub probe: ProbeSettings,
    pub max_tokens: u32,
    pub out: PathBuf,
    /// Requests kept in flight (the engine batches them).
    pub in_flight: usize,
    /// Store the reasoning text and each checkpoint's offset into it (`export-sft` needs them).
    pub keep_text: bool,
}

/// Records every item not yet in `settings.out`; returns how many were recorded.
pub fn record(engine: &dyn Engine, items: &[Item], settings: &RecordSettings) -> Result<usize> {
    let done = recorded_ids(&settings.out)?;
    let todo: Vec<&Item> = items.iter().filter(|i| !done.contains(&i.id)).collect();
    let mut writer = TraceWriter::append(&settings.out)?;
    let bar = ProgressBar::new(todo.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} traces  {per_sec}  eta {eta}  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut pending: VecDeque<(&Item, RequestHandle)> = VecDeque::new();
    let mut next = todo.iter();
    let mut recorded = 0;
    let mut correct = 0;
    loop {
        while pending.len() < settings.in_flight.max(1) {
            let Some(item) = next.next() else { break };
            pending.push_back((item, engine.submit(request_for(item, settings))?));
        }
        let Some((item, mut handle)) = pending.pop_front() else { break };
        let trace =
            collect(engine.model_name(), item, &mut handle, settings).with_context(|| format!("item {}", item.id))?;
        correct += usize::from(answer::exact_match(trace.task, &trace.final_.answer, &trace.gold));
        writer.write(&trace)?;
        recorded += 1;
        bar.inc(1);
        bar.set_message(format!("EM {correct}/{recorded}"));
    }
    bar.finish();
    Ok(recorded)
}

fn request_for(item: &Item, settings: &RecordSettings) -> Request {
    Request {
        prompt: Prompt::Chat(vec![ChatMessage::new("user", item.question.clone())]),
        max_tokens: settings.max_tokens,
        sampling: Sampling::GREEDY,
        stop: Vec::new(),
        probe: Some(ProbePlan {
            suffix: settings.probe.suffix.clone(),
            max_tokens: settings.probe.max_tokens,
            trigger: ProbeTrigger::Every(settings.probe.interval),
        }),
    }
}

/// Drains one request's events into a trace.
fn collect(model: &str, item: &Item, handle: &mut RequestHandle, settings: &RecordSettings) -> Result<Trace> {
    let mut recorder = EventRecorder::new(settings.task);
    while let Some(event) = handle.next_blocking() {
        match recorder.take(event) {
            Step::Going => {}
            Step::Done => {
                let head = TraceHead {
                    id: item.id.clone(),
                    dataset: settings.dataset_name.clone(),
                    question: Some(item.question.clone()),
                    gold: item.gold.clone(),
                    model: model.to_owned(),
                    prompt_tokens: 0,
                    probe: settings.probe.clone(),
                    served: None,
                };
                return recorder.finish(head, settings.keep_text).context("the engine produced an invalid trace");
            }
            Step::Failed(message) => bail!("engine error: {message}"),
        }
    }
    bail!("the engine closed the request without finishing it")
}
