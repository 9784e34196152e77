//! Turns what generation reports, token by token and probe by probe, into a trace's checkpoints:
//! the one piece of code that both `stopwise run` (full runs of a dataset) and `stopwise serve`
//! (production traffic) build checkpoints and traces with, so that a rule sees the same
//! checkpoint online as in replay.

use crate::answer::{self, Task};
use crate::trace::{Checkpoint, Final, ProbeSettings, Served, Trace, TraceError, TRACE_VERSION};

/// What a probe decoded at a checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeReading {
    /// The raw text the probe decoded.
    pub text: String,
    pub answer_tokens: u32,
    pub mean_prob: f32,
    pub min_prob: f32,
}

/// Everything a trace says besides its checkpoints and its end.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceHead {
    pub id: String,
    pub dataset: String,
    pub question: Option<String>,
    pub gold: Vec<String>,
    pub model: String,
    pub prompt_tokens: u32,
    pub probe: ProbeSettings,
    pub served: Option<Served>,
}

/// How generation ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Ending {
    /// Generated tokens in all.
    pub tokens: u32,
    /// The generated text the final answer is extracted from.
    pub text: String,
    /// The final answer when it is known already (a served request stopped early delivers the
    /// probe's answer); otherwise it is extracted from `text`.
    pub answer: Option<String>,
    /// `stop`, `length`, or for a served request stopped early, `stopwise`.
    pub finish_reason: String,
    /// Keep the text (and each checkpoint's offset into it) in the trace.
    pub keep_text: bool,
}

/// Builds one trace as generation goes.
#[derive(Debug, Clone)]
pub struct Recorder {
    task: Task,
    tokens: u32,
    /// Tokens, log-prob sum and entropy sum since the last checkpoint; a sum is `None` once
    /// any token came without it.
    segment: (u32, Option<f64>, Option<f64>),
    checkpoints: Vec<Checkpoint>,
    text_offsets: Vec<u32>,
}

impl Recorder {
    pub fn new(task: Task) -> Self {
        Recorder {
            task,
            tokens: 0,
            segment: (0, Some(0.0), Some(0.0)),
            checkpoints: Vec::new(),
            text_offsets: Vec::new(),
        }
    }

    pub fn task(&self) -> Task {
        self.task
    }

    /// Generated tokens so far.
    pub fn tokens(&self) -> u32 {
        self.tokens
    }

    /// The checkpoints kept so far.
    pub fn checkpoints(&self) -> &[Checkpoint] {
        &self.checkpoints
    }

    /// `tokens` more generated tokens, with their summed log-probability and entropy when known.
    pub fn generated(&mut self, tokens: u32, logprob: Option<f64>, entropy: Option<f64>) {
        self.tokens = self.tokens.saturating_add(tokens);
        let (n, lp, ent) = &mut self.segment;
        *n = n.saturating_add(tokens);
        *lp = lp.zip(logprob).map(|(a, b)| a + b);
        *ent = ent.zip(entropy).map(|(a, b)| a + b);
    }

    /// Closes the segment since the last checkpoint: a checkpoint at the tokens generated so far,
    /// with what generation tells of that segment and no probe yet. Unknown log-probs are `-inf`
    /// and unknown entropy `+inf`, which never look confident.
    pub fn checkpoint(&mut self) -> Checkpoint {
        let (n, lp, ent) = std::mem::replace(&mut self.segment, (0, Some(0.0), Some(0.0)));
        let mean = |sum: Option<f64>| sum.map(|s| s / f64::from(n.max(1)));
        Checkpoint::generated(
            self.tokens,
            mean(lp).map_or(f32::NEG_INFINITY, |m| m.min(0.0) as f32),
            mean(ent).map_or(f32::INFINITY, |m| m.max(0.0) as f32),
        )
    }

    /// The checkpoint with a probe's reading, its answer extracted as the task extracts answers.
    pub fn answered(&self, unprobed: Checkpoint, probe: ProbeReading) -> Checkpoint {
        Checkpoint {
            answer: answer::extract(self.task, &probe.text),
            probe_text: probe.text,
            answer_tokens: probe.answer_tokens,
            mean_prob: probe.mean_prob,
            min_prob: probe.min_prob,
            ..unprobed
        }
    }

    /// Keeps a probed checkpoint in the trace; `text_offset` is where it was taken in the
    /// generated text (kept only when the ending keeps the text). A checkpoint not after the last
    /// one kept is left out (an engine may report two probes at one position).
    pub fn keep(&mut self, checkpoint: Checkpoint, text_offset: usize) {
        if checkpoint.tokens == 0 || self.checkpoints.last().is_some_and(|last| last.tokens >= checkpoint.tokens) {
            return;
        }
        self.checkpoints.push(checkpoint);
        self.text_offsets.push(u32::try_from(text_offset).unwrap_or(u32::MAX));
    }

    /// The trace, validated.
    pub fn finish(self, head: TraceHead, ending: Ending) -> Result<Trace, TraceError> {
        let mut checkpoints = self.checkpoints;
        // A checkpoint past the end would be refused: an engine whose probes report more tokens
        // than its count at the end is believed at the end.
        let tokens = ending.tokens;
        checkpoints.retain(|c| c.tokens <= tokens);
        let mut text_offsets = self.text_offsets;
        text_offsets.truncate(checkpoints.len());
        let trace = Trace {
            v: TRACE_VERSION,
            id: head.id,
            dataset: head.dataset,
            task: self.task,
            question: head.question,
            gold: head.gold,
            model: head.model,
            prompt_tokens: head.prompt_tokens,
            probe: head.probe,
            checkpoints,
            final_: Final {
                tokens,
                answer: ending.answer.unwrap_or_else(|| answer::extract(self.task, &ending.text)),
                finish_reason: ending.finish_reason,
                text_offsets: if ending.keep_text { text_offsets } else { Vec::new() },
                text: ending.keep_text.then_some(ending.text),
            },
            served: head.served,
        };
        trace.validate()?;
        Ok(trace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head() -> TraceHead {
        TraceHead {
            id: "q-1".into(),
            dataset: "gsm8k".into(),
            question: None,
            gold: vec!["4".into()],
            model: "m".into(),
            prompt_tokens: 9,
            probe: ProbeSettings { suffix: "\nFinal answer: ".into(), max_tokens: 8, interval: 2 },
            served: None,
        }
    }

    fn reading(text: &str) -> ProbeReading {
        ProbeReading { text: text.into(), answer_tokens: 1, mean_prob: 0.9, min_prob: 0.8 }
    }

    #[test]
    fn segments_average_their_own_tokens_only() {
        let mut r = Recorder::new(Task::Numeric);
        r.generated(1, Some(-1.0), Some(2.0));
        r.generated(1, Some(-3.0), Some(0.0));
        let first = r.checkpoint();
        assert_eq!((first.tokens, first.segment_logprob, first.segment_entropy), (2, -2.0, 1.0));
        r.generated(2, Some(-1.0), Some(1.0));
        let second = r.checkpoint();
        assert_eq!((second.tokens, second.segment_logprob, second.segment_entropy), (4, -0.5, 0.5));
    }

    #[test]
    fn a_token_without_log_probs_makes_the_segment_unknown_not_confident() {
        let mut r = Recorder::new(Task::Numeric);
        r.generated(1, Some(-0.1), Some(0.1));
        r.generated(1, None, None);
        let c = r.checkpoint();
        assert_eq!((c.segment_logprob, c.segment_entropy), (f32::NEG_INFINITY, f32::INFINITY));
        r.generated(1, Some(-0.1), Some(0.1));
        assert!(r.checkpoint().segment_logprob.is_finite(), "the next segment starts afresh");
    }

    #[test]
    fn a_trace_keeps_probed_checkpoints_in_order_and_extracts_answers() {
        let mut r = Recorder::new(Task::Numeric);
        r.generated(2, Some(-0.2), Some(0.2));
        let c = r.checkpoint();
        r.keep(r.answered(c.clone(), reading("The answer is 3.")), 5);
        r.keep(r.answered(c, reading("4")), 5);
        r.generated(2, Some(-0.2), Some(0.2));
        let c = r.checkpoint();
        r.keep(r.answered(c, reading("4")), 9);
        let ending = Ending {
            tokens: 5,
            text: "so... Final answer: 4".into(),
            answer: None,
            finish_reason: "stop".into(),
            keep_text: true,
        };
        let trace = r.finish(head(), ending).unwrap();
        let answers: Vec<_> = trace.checkpoints.iter().map(|c| (c.tokens, c.answer.as_str())).collect();
        assert_eq!(answers, [(2, "3"), (4, "4")]);
        assert_eq!(trace.final_.answer, "4");
        assert_eq!(trace.final_.text_offsets, [5, 9]);
    }

    #[test]
    fn without_text_no_offsets_are_kept() {
        let mut r = Recorder::new(Task::Numeric);
        r.generated(2, None, None);
        let c = r.checkpoint();
        r.keep(r.answered(c, reading("4")), 3);
        let ending =
            Ending { tokens: 2, text: "4".into(), answer: None, finish_reason: "length".into(), keep_text: false };
        let trace = r.finish(head(), ending).unwrap();
        assert!(trace.final_.text.is_none() && trace.final_.text_offsets.is_empty());
        assert_eq!(trace.checkpoints[0].segment_logprob, f32::NEG_INFINITY);
    }

    #[test]
    fn a_checkpoint_past_the_reported_end_is_left_out() {
        let mut r = Recorder::new(Task::Numeric);
        r.generated(4, None, None);
        let c = r.checkpoint();
        r.keep(r.answered(c, reading("4")), 0);
        let ending = Ending {
            tokens: 3,
            text: String::new(),
            answer: Some("4".into()),
            finish_reason: "stop".into(),
            keep_text: false,
        };
        let trace = r.finish(head(), ending).unwrap();
        assert!(trace.checkpoints.is_empty());
        assert_eq!(trace.final_.tokens, 3);
    }
}
