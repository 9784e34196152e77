//! Choosing tokens from logits, and the statistics stopwise records about each choice.
//!
//! Kept free of llama.cpp types so that it can be tested on hand-made logits. Sums run in f64:
//! over a 50k-token vocabulary, f32 accumulation would make the recorded log-probs and entropies
//! drift by more than the differences the stop rules look at.

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use crate::Sampling;

/// Index of the largest logit; the lowest index wins a tie, and NaNs never win.
pub(crate) fn argmax(logits: &[f32]) -> usize {
    let mut best = 0;
    let mut best_logit = f32::NEG_INFINITY;
    for (index, &logit) in logits.iter().enumerate() {
        if logit > best_logit {
            best = index;
            best_logit = logit;
        }
    }
    best
}

/// Log-probability of `token` and entropy (nats) of softmax(`logits`) at temperature 1.
pub(crate) fn logprob_and_entropy(logits: &[f32], token: usize) -> (f32, f32) {
    let max = f64::from(logits.get(argmax(logits)).copied().unwrap_or(0.0));
    let mut partition = 0.0f64;
    let mut weighted_shift = 0.0f64;
    for &logit in logits {
        let shifted = f64::from(logit) - max;
        let weight = shifted.exp();
        partition += weight;
        weighted_shift += weight * shifted;
    }
    let log_partition = partition.ln();
    let token_shift = logits.get(token).map_or(f64::NEG_INFINITY, |&logit| f64::from(logit) - max);
    // H = -Σ p ln p with ln p = shift - ln Z, so H = ln Z - Σ p·shift.
    let entropy = log_partition - weighted_shift / partition;
    ((token_shift - log_partition) as f32, entropy.max(0.0) as f32)
}

/// The greedy token and its probability under softmax(`logits`) at temperature 1.
pub(crate) fn greedy_with_prob(logits: &[f32]) -> (usize, f32) {
    let best = argmax(logits);
    let max = f64::from(logits.get(best).copied().unwrap_or(0.0));
    let partition: f64 = logits.iter().map(|&logit| (f64::from(logit) - max).exp()).sum();
    (best, (1.0 / partition) as f32)
}

/// Chooses the real tokens of one request: argmax at temperature 0, else temperature + nucleus
/// sampling driven by the request's own seeded RNG (advanced once per real token, never by probes).
pub(crate) struct Sampler {
    temperature: f64,
    top_p: f64,
    rng: ChaCha8Rng,
    /// Reused between tokens: (weight, token) of the nucleus candidates.
    candidates: Vec<(f64, usize)>,
}

impl Sampler {
    pub(crate) fn new(sampling: Sampling) -> Self {
        Self {
            temperature: f64::from(sampling.temperature),
            top_p: f64::from(sampling.top_p),
            rng: ChaCha8Rng::seed_from_u64(sampling.seed),
            candidates: Vec::new(),
        }
    }

    pub(crate) fn sample(&mut self, logits: &[f32]) -> usize {
        if self.temperature <= 0.0 || logits.is_empty() {
            return argmax(logits);
        }
        let max = f64::from(logits[argmax(logits)]);
        let temperature = self.temperature;
        let weight = |logit: f32| ((f64::from(logit) - max) / temperature).exp();
        let total: f64 = logits.iter().map(|&logit| weight(logit)).sum();
        let uniform = self.next_uniform();

        if self.top_p >= 1.0 {
            let mut target = uniform * total;
            for (index, &logit) in logits.iter().enumerate() {
                target -= weight(logit);
                if target < 0.0 {
                    return index;
                }
            }
            return argmax(logits);
        }

        // The nucleus is a prefix of the tokens sorted by probability, so any probability
        // threshold whose survivors already hold top_p of the mass contains it: start with a
        // high threshold (few candidates to sort) and lower it until that holds.
        let needed = self.top_p * total;
        let mut threshold = total * 1e-3;
        loop {
            self.candidates.clear();
            let mut kept = 0.0;
            for (index, &logit) in logits.iter().enumerate() {
                let w = weight(logit);
                if w >= threshold {
                    self.candidates.push((w, index));
                    kept += w;
                }
            }
            if kept >= needed || threshold == 0.0 {
                break;
            }
            threshold = if threshold < total * 1e-12 { 0.0 } else { threshold * 1e-3 };
        }
        self.candidates.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let mut nucleus_len = self.candidates.len();
        let mut cumulative = 0.0;
        for (position, &(w, _)) in self.candidates.iter().enumerate() {
            cumulative += w;
            if cumulative >= needed {
                nucleus_len = position + 1;
                break;
            }
        }
        let nucleus = &self.candidates[..nucleus_len];
        let nucleus_mass: f64 = nucleus.iter().map(|&(w, _)| w).sum();
        let mut target = uniform * nucleus_mass;
        for &(w, index) in nucleus {
            target -= w;
            if target < 0.0 {
                return index;
            }
        }
        nucleus.first().map_or_else(|| argmax(logits), |&(_, index)| index)
    }

    /// Uniform in [0, 1) with 53 random bits.
    fn next_uniform(&mut self) -> f64 {
        (self.rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sampling(temperature: f32, top_p: f32, seed: u64) -> Sampling {
        Sampling { temperature, top_p, seed }
    }

    #[test]
    fn argmax_prefers_first_of_ties_and_skips_nan() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), 1);
        assert_eq!(argmax(&[f32::NAN, 0.5, 0.1]), 1);
    }

    #[test]
    fn uniform_logits_have_log_vocab_entropy() {
        let logits = vec![0.25f32; 1000];
        let (logprob, entropy) = logprob_and_entropy(&logits, 3);
        assert!((f64::from(logprob) + 1000f64.ln()).abs() < 1e-5);
        assert!((f64::from(entropy) - 1000f64.ln()).abs() < 1e-4);
    }

    #[test]
    fn peaked_logits_have_low_entropy_and_high_greedy_prob() {
        let mut logits = vec![0.0f32; 100];
        logits[7] = 20.0;
        let (token, prob) = greedy_with_prob(&logits);
        assert_eq!(token, 7);
        assert!(prob > 0.999);
        let (logprob, entropy) = logprob_and_entropy(&logits, 7);
        assert!(logprob > -0.001 && logprob <= 0.0);
        assert!(entropy < 0.01);
        let (other, _) = logprob_and_entropy(&logits, 8);
        assert!((other + 20.0).abs() < 0.01);
    }

    #[test]
    fn seeded_sampling_is_deterministic_and_seed_dependent() {
        let logits: Vec<f32> = (0..500).map(|i| ((i * 37) % 11) as f32 * 0.3).collect();
        let draw = |seed| {
            let mut sampler = Sampler::new(sampling(0.8, 0.95, seed));
            (0..50).map(|_| sampler.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn greedy_sampling_is_argmax() {
        let logits = [0.1f32, 2.0, -1.0];
        let mut sampler = Sampler::new(sampling(0.0, 0.5, 3));
        assert_eq!(sampler.sample(&logits), 1);
    }

    #[test]
    fn top_p_keeps_only_the_nucleus() {
        // probabilities ≈ 0.6, 0.3, 0.1 at temperature 1: top_p 0.5 keeps only token 0,
        // top_p 0.85 keeps tokens 0 and 1.
        let logits = [0.6f32.ln(), 0.3f32.ln(), 0.1f32.ln()];
        let mut narrow = Sampler::new(sampling(1.0, 0.5, 1));
        assert!((0..200).all(|_| narrow.sample(&logits) == 0));
        let mut wider = Sampler::new(sampling(1.0, 0.85, 1));
        let draws: Vec<usize> = (0..400).map(|_| wider.sample(&logits)).collect();
        assert!(draws.contains(&1));
        assert!(!draws.contains(&2));
    }

    #[test]
    fn full_distribution_sampling_follows_probabilities() {
        let logits = [0.75f32.ln(), 0.25f32.ln()];
        let mut sampler = Sampler::new(sampling(1.0, 1.0, 42));
        let ones = (0..4000).filter(|_| sampler.sample(&logits) == 1).count();
        assert!((800..1200).contains(&ones), "{ones}");
    }
}
