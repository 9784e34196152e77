//! Signals several rules (and the learned stopper's features) read off checkpoints: the answer a
//! consistency rule compares, runs of equal answers, DEER's confidence, the learned score, and the
//! mean log-probability over a window of generated tokens.

use std::collections::VecDeque;

use crate::answer::{self, Task};
use crate::features::Features;
use crate::learned::SharedModel;
use crate::trace::Checkpoint;

/// The answer a consistency rule compares: normalised, `None` when empty or hedged.
pub fn consistency_key(task: Task, checkpoint: &Checkpoint, hedge_filter: bool) -> Option<String> {
    if hedge_filter && answer::is_hedging(&checkpoint.probe_text) {
        return None;
    }
    Some(answer::normalize(task, &checkpoint.answer)).filter(|a| !a.is_empty())
}

/// Length of the run of equal answers ending at the current one.
pub fn next_run(previous: Option<&str>, current: Option<&str>, run: u32) -> u32 {
    match (previous, current) {
        (_, None) => 0,
        (Some(p), Some(c)) if p == c => run + 1,
        (_, Some(_)) => 1,
    }
}

/// DEER's score: the trial answer's mean token probability; an empty answer never qualifies.
pub fn confidence_score(checkpoint: &Checkpoint) -> f32 {
    if checkpoint.answer.is_empty() {
        f32::NEG_INFINITY
    } else {
        checkpoint.mean_prob
    }
}

/// The learned rule's score of a checkpoint; an empty answer never qualifies.
pub fn learned_score(model: &SharedModel, features: &Features, checkpoint: &Checkpoint) -> f64 {
    if checkpoint.answer.is_empty() {
        f64::NEG_INFINITY
    } else {
        model.score(features)
    }
}

/// Mean log-probability over (about) the last `window` generated tokens, from per-segment means.
///
/// Checkpoints carry the mean log-prob of the tokens since the previous checkpoint; the window
/// keeps whole segments, the oldest partly weighted, so any window can be replayed from a trace.
#[derive(Debug, Clone)]
pub struct LogprobMean {
    window: u32,
    /// (tokens in the segment, mean log-prob of the segment)
    segments: VecDeque<(u32, f64)>,
    last_tokens: u32,
}

impl LogprobMean {
    pub fn new(window: u32) -> Self {
        LogprobMean { window: window.max(1), segments: VecDeque::new(), last_tokens: 0 }
    }

    /// Adds the checkpoint's segment and returns the window's mean log-probability.
    pub fn push(&mut self, checkpoint: &Checkpoint) -> f64 {
        let length = checkpoint.tokens.saturating_sub(self.last_tokens);
        self.last_tokens = checkpoint.tokens;
        self.segments.push_back((length, f64::from(checkpoint.segment_logprob)));
        let mut covered = 0u32;
        let mut sum = 0.0;
        let mut keep = 0;
        for &(len, mean) in self.segments.iter().rev() {
            let take = len.min(self.window - covered);
            sum += mean * f64::from(take);
            covered += take;
            keep += 1;
            if covered == self.window {
                break;
            }
        }
        while self.segments.len() > keep {
            self.segments.pop_front();
        }
        if covered == 0 {
            f64::NEG_INFINITY
        } else {
            sum / f64::from(covered)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::tests::cp;

    #[test]
    fn logprob_window_weights_partial_segments() {
        let mut w = LogprobMean::new(48);
        assert_eq!(w.push(&cp(32, "", 0.0, -1.0)), -1.0);
        // 32 tokens at -2 plus 16 of the previous 32 at -1.
        let mean = w.push(&cp(64, "", 0.0, -2.0));
        assert!((mean - (-2.0 * 32.0 - 16.0) / 48.0).abs() < 1e-9, "{mean}");
    }
}
