//! The embedded engine at its limits: a context too small for the generation and its probes,
//! and a full queue. A separate test binary (cargo runs binaries one after the other) so that
//! its own small engine never competes for the cores with the main tests' engine.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use stopwise_engine::{Engine, EngineError, FinishReason, LlamaConfig, LlamaEngine, Prompt, RequestHandle, Sampling};

#[test]
fn probes_skip_when_the_context_is_too_small_and_length_ends_generation() {
    let small = LlamaEngine::load(LlamaConfig {
        n_ctx_per_seq: 64,
        parallel: 1,
        queue_limit: 1,
        ..LlamaConfig::new(model_path())
    })
    .unwrap();
    let prompt = Prompt::Raw("Count from one to one hundred: one, two, three,".to_string());
    let output = collect(small.submit(request(prompt.clone(), 1000, Sampling::GREEDY, probe_every(4))).unwrap());
    let (reason, tokens) = output.finish.unwrap();
    assert_eq!(reason, FinishReason::Length);
    // The last token is sampled from the logits of position 63, so it is never decoded.
    assert_eq!(output.prompt_tokens + tokens, 64 + 1);
    // A probe needs its suffix (at least one token) and up to 8 answer tokens after the text:
    // late checkpoints are skipped instead of running past the context.
    let last_probe = output.probes.last().unwrap().0;
    assert!(output.prompt_tokens + last_probe + 8 <= 64, "a probe ran past the context");
    assert!(output.probes.len() < tokens as usize / 4, "no probe was skipped");
    let plain = collect(small.submit(request(prompt, 1000, Sampling::GREEDY, None)).unwrap());
    assert_same_generation(&output, &plain);

    // With its one sequence busy and one request waiting, a third is refused.
    let busy: Vec<Result<RequestHandle, EngineError>> =
        (0..3).map(|_| small.submit(request(chat(QUESTION), 200, Sampling::GREEDY, None))).collect();
    assert!(busy.iter().any(|result| matches!(result, Err(EngineError::Busy { queue_limit: 1 }))));
}
