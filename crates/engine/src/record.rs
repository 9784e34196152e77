//! One engine request's events as a trace: what `stopwise run` records for a dataset and what
//! `stopwise serve` records when it audits a request, through the same core
//! [`Recorder`](stopwise_core::recorder::Recorder).

use stopwise_core::answer::Task;
use stopwise_core::recorder::{Ending, ProbeReading, Recorder, TraceHead};
use stopwise_core::trace::{Trace, TraceError};

use crate::Event;

/// Where a request is after an event.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Going,
    /// The request is over; [`EventRecorder::finish`] gives its trace.
    Done,
    Failed(String),
}

/// Feeds one request's events into a trace.
#[derive(Debug, Clone)]
pub struct EventRecorder {
    recorder: Recorder,
    text: String,
    prompt_tokens: u32,
    done: Option<(u32, &'static str)>,
}

impl EventRecorder {
    pub fn new(task: Task) -> Self {
        EventRecorder { recorder: Recorder::new(task), text: String::new(), prompt_tokens: 0, done: None }
    }

    pub fn take(&mut self, event: Event) -> Step {
        match event {
            Event::Started { prompt_tokens } => self.prompt_tokens = prompt_tokens,
            Event::Token { text, logprob, entropy } => {
                self.text.push_str(&text);
                self.recorder.generated(1, Some(f64::from(logprob)), Some(f64::from(entropy)));
            }
            Event::Probe { text, tokens, mean_prob, min_prob, .. } => {
                // The engine probes between two tokens, where the recorder's count already is.
                let checkpoint = self.recorder.checkpoint();
                let reading = ProbeReading { text, answer_tokens: tokens, mean_prob, min_prob };
                let answered = self.recorder.answered(checkpoint, reading);
                self.recorder.keep(answered, self.text.len());
            }
            Event::Done { finish_reason, completion_tokens } => {
                self.done = Some((completion_tokens, finish_reason.as_str()));
                return Step::Done;
            }
            Event::Error(message) => return Step::Failed(message),
        }
        Step::Going
    }

    /// The trace of a request that is done (`Err` before then); `head.prompt_tokens` is the
    /// engine's count.
    pub fn finish(self, head: TraceHead, keep_text: bool) -> Result<Trace, TraceError> {
        let Some((tokens, finish_reason)) = self.done else {
            return Err(TraceError::Invalid { field: "final".into(), why: "the request has not finished".into() });
        };
        let head = TraceHead { prompt_tokens: self.prompt_tokens, ..head };
        let ending = Ending { tokens, text: self.text, answer: None, finish_reason: finish_reason.into(), keep_text };
        self.recorder.finish(head, ending)
    }
}
