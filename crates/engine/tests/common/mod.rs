//! Helpers shared by the engine's integration tests: finding the model, building requests,
//! collecting a request's events and checking them.

// Each test binary uses its own subset of these helpers.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use stopwise_engine::{
    fetch_default_model, resolve_model, ChatMessage, Event, FinishReason, ProbePlan, ProbeTrigger, Prompt, Request,
    RequestHandle, Sampling,
};

pub const SYSTEM_PROMPT: &str = "Solve the math problem step by step. End with the line 'Final answer: <number>'.";
pub const QUESTION: &str = "Natalia sold clips to 48 of her friends in April, and then she sold half \
    as many clips in May. How many clips did Natalia sell altogether in April and May?";

pub fn model_path() -> PathBuf {
    match std::env::var_os("STOPWISE_MODEL") {
        Some(path) => resolve_model(Some(Path::new(&path))).unwrap(),
        None => fetch_default_model(|line| eprintln!("model: {line}")).unwrap(),
    }
}

pub fn chat(question: &str) -> Prompt {
    Prompt::Chat(vec![ChatMessage::new("user", question)])
}

pub fn request(prompt: Prompt, max_tokens: u32, sampling: Sampling, probe: Option<ProbePlan>) -> Request {
    Request { prompt, max_tokens, sampling, stop: Vec::new(), probe }
}

pub fn probe_every(interval: u32) -> Option<ProbePlan> {
    probe_plan(ProbeTrigger::Every(interval))
}

pub fn probe_plan(trigger: ProbeTrigger) -> Option<ProbePlan> {
    Some(ProbePlan { suffix: "\n\nFinal answer: ".to_string(), max_tokens: 8, trigger })
}

/// Everything a request reported.
#[derive(Debug, Default)]
pub struct Output {
    pub prompt_tokens: u32,
    pub pieces: Vec<String>,
    /// (logprob, entropy) of each token.
    pub stats: Vec<(f32, f32)>,
    /// (after_tokens, text, tokens, mean_prob, min_prob)
    pub probes: Vec<(u32, String, u32, f32, f32)>,
    pub finish: Option<(FinishReason, u32)>,
}

impl Output {
    pub fn text(&self) -> String {
        self.pieces.concat()
    }
}

pub fn collect(handle: RequestHandle) -> Output {
    collect_after(Vec::new(), handle)
}

/// Collects a request's events, `seen` being those already read from `handle`.
pub fn collect_after(seen: Vec<Event>, mut handle: RequestHandle) -> Output {
    let mut output = Output::default();
    let mut started = false;
    let events = seen.into_iter().chain(std::iter::from_fn(move || handle.next_blocking()));
    for event in events {
        assert!(output.finish.is_none(), "event after Done: {event:?}");
        match event {
            Event::Started { prompt_tokens } => {
                assert!(!started, "two Started events");
                started = true;
                output.prompt_tokens = prompt_tokens;
            }
            Event::Token { text, logprob, entropy } => {
                assert!(started, "Token before Started");
                output.pieces.push(text);
                output.stats.push((logprob, entropy));
            }
            Event::Probe { after_tokens, text, tokens, mean_prob, min_prob } => {
                assert_eq!(after_tokens as usize, output.pieces.len());
                output.probes.push((after_tokens, text, tokens, mean_prob, min_prob));
            }
            Event::Done { finish_reason, completion_tokens } => {
                output.finish = Some((finish_reason, completion_tokens))
            }
            Event::Error(message) => panic!("request failed: {message}"),
        }
    }
    let (_, completion_tokens) = output.finish.expect("no Done event");
    assert_eq!(completion_tokens as usize, output.pieces.len());
    output
}

pub fn assert_same_generation(with_probes: &Output, without: &Output) {
    assert_eq!(with_probes.text(), without.text());
    assert_eq!(with_probes.pieces, without.pieces);
    assert_same_stats(with_probes, without);
    assert_eq!(with_probes.finish, without.finish);
}

/// Bit-identical log-probs and entropies; on failure, names the first token that differs.
pub fn assert_same_stats(left: &Output, right: &Output) {
    assert_eq!(left.stats.len(), right.stats.len(), "token counts differ");
    if let Some(index) = left.stats.iter().zip(&right.stats).position(|(a, b)| a != b) {
        panic!("(log-prob, entropy) of token {index} differ: {:?} vs {:?}", left.stats[index], right.stats[index]);
    }
}

pub fn assert_sane_probes(output: &Output, interval: u32, max_tokens: u32) {
    assert!(output.probes.len() >= 5, "only {} probes in {} tokens", output.probes.len(), output.pieces.len());
    for (index, (after, text, tokens, mean, min)) in output.probes.iter().enumerate() {
        assert_eq!(*after, interval * (index as u32 + 1), "probe schedule");
        assert!(*tokens >= 1 && *tokens <= max_tokens, "{tokens} probe tokens");
        assert!(!text.trim().is_empty(), "empty probe answer");
        assert!(!text.trim_start().contains('\n'), "probe answer spans lines: {text:?}");
        assert!(0.0 < *min && min <= mean && *mean <= 1.0, "probs {min} {mean}");
    }
}
