//! End-to-end tests of the embedded engine on the real default model (SmolLM2-135M-Instruct),
//! all on one engine loaded once for this test binary (the model is fetched first if needed;
//! set `STOPWISE_MODEL` to use a model file directly).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::OnceLock;

use common::*;
use stopwise_engine::{
    Engine, EngineError, Event, FinishReason, LlamaConfig, LlamaEngine, ProbePlan, ProbeTrigger, Prompt, Request,
    RequestHandle, Sampling,
};

fn engine() -> &'static LlamaEngine {
    static ENGINE: OnceLock<LlamaEngine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut config = LlamaConfig::new(model_path());
        config.n_ctx_per_seq = 1024;
        config.system_prompt = Some(SYSTEM_PROMPT.to_string());
        LlamaEngine::load(config).unwrap()
    })
}

fn run(request: Request) -> Output {
    collect(engine().submit(request).unwrap())
}

#[test]
fn greedy_probes_are_transparent() {
    let plain = run(request(chat(QUESTION), 160, Sampling::GREEDY, None));
    let probed = run(request(chat(QUESTION), 160, Sampling::GREEDY, probe_every(16)));
    eprintln!("greedy output: {:?}", plain.text());
    eprintln!("probes: {:?}", probed.probes);
    assert!(plain.probes.is_empty());
    assert!(plain.prompt_tokens > 20);
    assert_same_generation(&probed, &plain);
    assert_sane_probes(&probed, 16, 8);
    for (logprob, entropy) in &plain.stats {
        assert!(*logprob <= 0.0 && logprob.is_finite());
        assert!(*entropy >= 0.0 && entropy.is_finite());
    }
}

#[test]
fn seeded_sampling_is_deterministic_and_probe_transparent() {
    let sampling = Sampling { temperature: 0.8, top_p: 0.95, seed: 7 };
    // Two runs with the same seed, one of them probing: identical output shows both that the
    // seeded sampler is deterministic and that probes neither consume its randomness nor
    // disturb the logits.
    let plain = run(request(chat(QUESTION), 160, sampling, None));
    let probed = run(request(chat(QUESTION), 160, sampling, probe_every(16)));
    let other_seed = run(request(chat(QUESTION), 160, Sampling { seed: 8, ..sampling }, None));
    eprintln!("sampled output: {:?}", plain.text());
    assert_same_generation(&probed, &plain);
    assert_sane_probes(&probed, 16, 8);
    // Greedy decoding, or a sampler that ignored its seed, would give both seeds one output.
    assert_ne!(plain.text(), other_seed.text(), "seed has no effect");
}

#[test]
fn probes_on_request_arrive_where_asked_and_are_transparent() {
    let sampling = Sampling::GREEDY;
    let plain = run(request(chat(QUESTION), 160, sampling, None));
    // Asking for nothing probes nothing.
    let unasked = run(request(chat(QUESTION), 160, sampling, probe_plan(ProbeTrigger::OnRequest)));
    assert!(unasked.probes.is_empty(), "unrequested probes: {:?}", unasked.probes);
    assert_same_generation(&unasked, &plain);

    // Each probe that arrives prompts the next request, so that no request is overtaken by a
    // later one (a request for a later point replaces an earlier one not yet taken). The test
    // reads events behind the engine, so it knows only lower bounds of where probes land.
    let mut handle =
        engine().submit(request(chat(QUESTION), 160, sampling, probe_plan(ProbeTrigger::OnRequest))).unwrap();
    let requester = handle.probe_requester();
    requester.request(5);
    let (mut events, mut tokens, mut probes) = (Vec::new(), 0, Vec::new());
    // After the first probe: a point the engine has passed once the test sees token `behind`.
    let mut behind = None;
    while let Some(event) = handle.next_blocking() {
        match &event {
            Event::Token { .. } => {
                tokens += 1;
                if behind == Some(tokens) {
                    requester.request(tokens - 5);
                }
            }
            Event::Probe { after_tokens, .. } => {
                probes.push(*after_tokens);
                // Points already answered by this probe ask for nothing more.
                requester.request(*after_tokens);
                requester.request(after_tokens - 1);
                match probes.len() {
                    1 => behind = Some(after_tokens + 10),
                    2 => {
                        requester.request(after_tokens + 25);
                        requester.request(after_tokens + 15);
                    }
                    _ => {}
                }
            }
            _ => {}
        }
        events.push(event);
    }
    let probed = collect_after(events, handle);
    eprintln!("output: {:?}", plain.text());
    eprintln!("probes: {:?}", probed.probes);
    assert_same_generation(&probed, &plain);
    assert_eq!(probes.len(), 3, "probes at {probes:?}");
    assert!(probes[0] >= 5, "probes at {probes:?}");
    // Asked for a point behind the engine: taken at its next boundary, at or after `behind`.
    assert!(probes[1] >= probes[0] + 10, "probes at {probes:?}");
    assert!(probes[2] >= probes[1] + 25, "probes at {probes:?}");
    for (_, text, tokens, mean, min) in &probed.probes {
        assert!(*tokens >= 1 && *tokens <= 8 && !text.trim().is_empty(), "probe {text:?} of {tokens} tokens");
        assert!(0.0 < *min && min <= mean && *mean <= 1.0, "probs {min} {mean}");
    }
}

#[test]
fn concurrent_requests_match_solo_runs() {
    let questions = [
        "Write a very long story about a dragon who learns to bake bread.",
        QUESTION,
        "A baker made 3 trays of 12 cookies and sold 20 of them. How many cookies are left?",
        "Tom is 4 years older than his sister, who is 9. How old will Tom be in 5 years?",
        "What is the capital of France? Answer in one word.",
    ];
    let build = |index: usize| {
        // Half of them probe, so the batch mixes generation, suffixes and greedy probe tokens.
        let probe = (index % 2 == 0).then(|| probe_every(8)).flatten();
        // The first one grows past 256 KV cells, where llama.cpp's attention kernels change again.
        let max_tokens = if index == 0 { 240 } else { 64 };
        request(chat(questions[index]), max_tokens, Sampling::GREEDY, probe)
    };
    let solo: Vec<Output> = (0..questions.len()).map(|index| run(build(index))).collect();
    // The first request is already generating when the others arrive, so their prompts are
    // prefilled while it decodes, and it is past 256 KV cells while they run beside it.
    let mut first = engine().submit(build(0)).unwrap();
    let mut first_events = Vec::new();
    while first_events.iter().filter(|event| matches!(event, Event::Token { .. })).count() < 200 {
        first_events.push(first.next_blocking().unwrap());
    }
    let others: Vec<RequestHandle> = (1..questions.len()).map(|index| engine().submit(build(index)).unwrap()).collect();
    let mut together = vec![collect_after(first_events, first)];
    together.extend(others.into_iter().map(collect));
    for (index, (alone, batched)) in solo.iter().zip(&together).enumerate() {
        eprintln!("request {index}: {:?}", alone.text());
        assert_eq!(alone.pieces, batched.pieces, "request {index} text differs");
        assert_same_stats(alone, batched);
        assert_eq!(alone.probes, batched.probes, "request {index} probes differ");
        assert_eq!(alone.finish, batched.finish);
    }
    assert_eq!(solo[0].finish, Some((FinishReason::Length, 240)));
}

#[test]
fn dropping_a_handle_cancels_the_request() {
    let long_request = || {
        request(chat("Write a very long story about a dragon who learns to bake bread."), 2000, Sampling::GREEDY, None)
    };
    let cancelled_before = engine().stats().cancelled;
    let mut handles: Vec<RequestHandle> =
        (0..engine().parallel()).map(|_| engine().submit(long_request()).unwrap()).collect();
    for handle in &mut handles {
        let mut tokens = 0;
        while tokens < 3 {
            match handle.next_blocking() {
                Some(Event::Token { .. }) => tokens += 1,
                Some(Event::Started { .. }) => {}
                other => panic!("unexpected event {other:?}"),
            }
        }
    }
    drop(handles);
    let after = run(request(chat(QUESTION), 16, Sampling::GREEDY, None));
    assert_eq!(after.finish, Some((FinishReason::Length, 16)));
    assert_eq!(engine().stats().cancelled - cancelled_before, u64::from(engine().parallel()));
}

#[test]
fn stop_strings_end_generation_before_the_stop() {
    let full = run(request(chat(QUESTION), 80, Sampling::GREEDY, None));
    let text = full.text();
    // A stop string taken from the middle of the output: generation must end right before its
    // first occurrence, without emitting any of it.
    let start = text.char_indices().map(|(index, _)| index).find(|&index| index >= text.len() / 2).unwrap();
    let stop: String = text[start..].chars().take(6).collect();
    let expected = &text[..text.find(&stop).unwrap()];
    let mut with_stop = request(chat(QUESTION), 80, Sampling::GREEDY, None);
    with_stop.stop = vec!["no such stop string @@".to_string(), stop.clone()];
    let stopped = run(with_stop);
    eprintln!("stop {stop:?} -> {:?}", stopped.text());
    assert_eq!(stopped.text(), expected);
    let (reason, tokens) = stopped.finish.unwrap();
    assert_eq!(reason, FinishReason::Stop);
    assert!(tokens < full.finish.unwrap().1);
    assert_eq!(stopped.stats[..], full.stats[..stopped.stats.len()]);
}

#[test]
fn bad_requests_are_errors() {
    let mut bad = request(chat(QUESTION), 10, Sampling::GREEDY, None);
    bad.sampling.temperature = -1.0;
    assert!(matches!(engine().submit(bad), Err(EngineError::InvalidRequest(_))));
    let mut bad = request(chat(QUESTION), 10, Sampling::GREEDY, probe_every(4));
    bad.probe = Some(ProbePlan { suffix: String::new(), max_tokens: 4, trigger: ProbeTrigger::Every(4) });
    assert!(matches!(engine().submit(bad), Err(EngineError::InvalidRequest(_))));
    let mut bad = request(chat(QUESTION), 10, Sampling::GREEDY, probe_plan(ProbeTrigger::Every(0)));
    assert!(matches!(engine().submit(bad.clone()), Err(EngineError::InvalidRequest(_))));
    bad.probe = probe_plan(ProbeTrigger::OnRequest).map(|plan| ProbePlan { max_tokens: 0, ..plan });
    assert!(matches!(engine().submit(bad), Err(EngineError::InvalidRequest(_))));
    let long = "word ".repeat(2000);
    assert!(matches!(
        engine().submit(request(Prompt::Raw(long), 10, Sampling::GREEDY, None)),
        Err(EngineError::PromptTooLong { .. })
    ));
    assert!(matches!(
        engine().submit(request(Prompt::Chat(Vec::new()), 10, Sampling::GREEDY, None)),
        Err(EngineError::InvalidRequest(_))
    ));
    let zero = run(request(chat(QUESTION), 0, Sampling::GREEDY, None));
    assert_eq!(zero.finish, Some((FinishReason::Length, 0)));
}
