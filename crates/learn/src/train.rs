//! The trainer: logistic regression (no hidden layer) or a small MLP (tanh hidden layers), fit
//! with Adam on mini-batches; losses `bce`, `weighted-bce` (an early stop that loses the answer
//! costs `cost_ratio` times a late one), `focal`; L2; a `constant|step|cosine` learning-rate
//! schedule with linear warm-up; early stopping on a validation split of whole traces.
//!
//! Everything runs sequentially from one seed (see [`crate::rng`]), so a seed and the data fix
//! the model bit for bit.

use std::str::FromStr;

use serde::{Deserialize, Serialize};
use stopwise_core::features::{Features, FEATURES, FEATURE_NAMES, FEATURE_SCHEMA_VERSION};
use stopwise_core::learned::{sigmoid, Dense, StopperModel, MODEL_FORMAT};

use crate::data::{Label, TraceRows};
use stopwise_core::rng::{fnv1a, SplitMix64};

/// The training loss; the positive class is "stopping here keeps the answer".
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "kebab-case")]
pub enum Loss {
    Bce,
    /// Negatives (stopping here would change the answer) weigh `cost_ratio` times positives.
    WeightedBce {
        cost_ratio: f64,
    },
    /// Focal loss: down-weights examples already well classified by `(1 - p_true)^gamma`.
    Focal {
        gamma: f64,
    },
}

impl Loss {
    /// Loss and its derivative with respect to the logit, for one example.
    fn value_and_gradient(self, logit: f64, positive: bool) -> (f64, f64) {
        let p = sigmoid(logit).clamp(1e-12, 1.0 - 1e-12);
        let (p_true, sign) = if positive { (p, -1.0) } else { (1.0 - p, 1.0) };
        match self {
            Loss::Bce => (-p_true.ln(), sign * (1.0 - p_true)),
            Loss::WeightedBce { cost_ratio } => {
                let w = if positive { 1.0 } else { cost_ratio };
                (-w * p_true.ln(), w * sign * (1.0 - p_true))
            }
            Loss::Focal { gamma } => {
                // L = -(1-q)^g ln q with q = p_true; dq/dz = -sign * q (1-q).
                let q = p_true;
                let value = -(1.0 - q).powf(gamma) * q.ln();
                let dl_dq = gamma * (1.0 - q).powf(gamma - 1.0) * q.ln() - (1.0 - q).powf(gamma) / q;
                let dq_dz = -sign * q * (1.0 - q);
                (value, dl_dq * dq_dz)
            }
        }
    }

    pub fn label(self) -> String {
        match self {
            Loss::Bce => "bce".into(),
            Loss::WeightedBce { cost_ratio } => format!("weighted-bce({cost_ratio})"),
            Loss::Focal { gamma } => format!("focal({gamma})"),
        }
    }
}

/// Learning-rate decay after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    Constant,
    /// Halves the rate every quarter of the epochs.
    Step,
    /// Cosine decay to zero over the remaining steps.
    Cosine,
}

impl FromStr for Schedule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "constant" => Ok(Schedule::Constant),
            "step" => Ok(Schedule::Step),
            "cosine" => Ok(Schedule::Cosine),
            _ => Err(format!("unknown learning-rate schedule `{s}`; schedules are: constant, step, cosine")),
        }
    }
}

/// Every knob of one training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub label: Label,
    /// Width of each hidden layer; empty for logistic regression.
    pub hidden: Vec<usize>,
    pub loss: Loss,
    /// L2 penalty on the weights (not the biases), added to the mean loss.
    pub l2: f64,
    pub learning_rate: f64,
    pub schedule: Schedule,
    pub warmup_epochs: usize,
    pub batch_size: usize,
    /// Most epochs; early stopping may end sooner.
    pub epochs: usize,
    /// Epochs without a better validation loss before stopping.
    pub patience: usize,
    /// Share of the training traces held out for early stopping (0: no early stopping).
    pub validation_fraction: f64,
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            label: Label::Agree,
            hidden: Vec::new(),
            loss: Loss::Bce,
            l2: 1e-3,
            learning_rate: 0.01,
            schedule: Schedule::Cosine,
            warmup_epochs: 2,
            batch_size: 32,
            epochs: 200,
            patience: 20,
            validation_fraction: 0.2,
            seed: 0,
        }
    }
}

impl TrainConfig {
    pub fn check(&self) -> Result<(), TrainError> {
        let bad = |why: &str| Err(TrainError::Config(why.into()));
        let finite_positive = |x: f64| x.is_finite() && x > 0.0;
        if !finite_positive(self.learning_rate) {
            return bad("the learning rate must be positive");
        }
        if !(self.l2.is_finite() && self.l2 >= 0.0) {
            return bad("l2 must be zero or positive");
        }
        if self.batch_size == 0 || self.epochs == 0 {
            return bad("batch size and epochs must be at least 1");
        }
        if self.hidden.contains(&0) {
            return bad("hidden layers need at least one unit");
        }
        if !(0.0..1.0).contains(&self.validation_fraction) {
            return bad("the validation fraction must be in [0, 1)");
        }
        match self.loss {
            Loss::WeightedBce { cost_ratio } if !finite_positive(cost_ratio) => bad("the cost ratio must be positive"),
            Loss::Focal { gamma } if !(gamma.is_finite() && gamma >= 0.0) => bad("focal gamma must be >= 0"),
            _ => Ok(()),
        }
    }

    /// One line naming the searched knobs, for search tables.
    pub fn label_short(&self) -> String {
        format!(
            "{} hidden={:?} lr={} l2={} {:?} batch={}",
            self.loss.label(),
            self.hidden,
            self.learning_rate,
            self.l2,
            self.schedule,
            self.batch_size
        )
        .to_lowercase()
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TrainError {
    #[error("invalid training settings: {0}")]
    Config(String),
    #[error("no training examples: {0}")]
    NoData(String),
}

/// A trained model and how the run went.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrainReport {
    #[serde(skip)]
    pub model: StopperModel,
    pub examples: usize,
    pub positives: usize,
    pub validation_examples: usize,
    pub epochs_run: usize,
    pub best_epoch: usize,
    pub best_validation_loss: Option<f64>,
}

/// Trains on the given traces' answered checkpoints.
pub fn train(traces: &[&TraceRows], config: &TrainConfig) -> Result<TrainReport, TrainError> {
    config.check()?;
    let mut groups: Vec<Vec<(Features, bool)>> = traces.iter().filter_map(|t| t.examples(config.label)).collect();
    if groups.iter().all(Vec::is_empty) {
        let why = match config.label {
            Label::Correct => "no trace has both gold answers and answered probes",
            Label::Agree => "no trace has an answered probe",
        };
        return Err(TrainError::NoData(why.into()));
    }
    // Whole traces go to validation: checkpoints of one trace are strongly correlated.
    SplitMix64::derive(config.seed, 1).shuffle(&mut groups);
    let held_out = ((groups.len() as f64 * config.validation_fraction).round() as usize).min(groups.len() - 1);
    let validation: Vec<(Features, bool)> = groups[..held_out].concat();
    let training: Vec<(Features, bool)> = groups[held_out..].concat();
    if training.is_empty() {
        return Err(TrainError::NoData("the traces left for training have no answered probes".into()));
    }
    let (mean, scale) = standardisation(&training);
    let standardise = |rows: &[(Features, bool)]| -> Vec<(Vec<f64>, bool)> {
        rows.iter()
            .map(|(x, y)| (x.iter().zip(&mean).zip(&scale).map(|((x, m), s)| (x - m) / s).collect(), *y))
            .collect()
    };
    let training_rows = standardise(&training);
    let validation_rows = standardise(&validation);

    let mut net = Network::new(&config.hidden, &mut SplitMix64::derive(config.seed, 2));
    let mut adam = Adam::new(&net);
    let mut order: Vec<usize> = (0..training_rows.len()).collect();
    let mut shuffler = SplitMix64::derive(config.seed, 3);
    let steps_per_epoch = training_rows.len().div_ceil(config.batch_size);
    let total_steps = steps_per_epoch * config.epochs;
    let mut best = (f64::INFINITY, net.clone(), 0);
    let mut epochs_run = 0;
    let mut grad = net.zeros();
    for epoch in 0..config.epochs {
        epochs_run = epoch + 1;
        shuffler.shuffle(&mut order);
        for (b, batch) in order.chunks(config.batch_size).enumerate() {
            grad.fill_zero();
            for &i in batch {
                let (x, y) = &training_rows[i];
                net.accumulate_gradient(x, *y, config.loss, &mut grad);
            }
            grad.scale(1.0 / batch.len() as f64);
            grad.add_l2(&net, config.l2);
            let step = epoch * steps_per_epoch + b;
            adam.step(&mut net, &grad, learning_rate(config, step, steps_per_epoch, total_steps));
        }
        if validation_rows.is_empty() {
            best = (f64::NAN, net.clone(), epoch + 1);
            continue;
        }
        let loss = mean_loss(&net, &validation_rows, config.loss);
        if loss < best.0 {
            best = (loss, net.clone(), epoch + 1);
        } else if epoch + 1 - best.2 >= config.patience.max(1) {
            break;
        }
    }
    let (best_loss, net, best_epoch) = best;
    let model = net.into_model(config, &mean, &scale);
    Ok(TrainReport {
        examples: training.len(),
        positives: training.iter().filter(|(_, y)| *y).count(),
        validation_examples: validation.len(),
        epochs_run,
        best_epoch,
        best_validation_loss: best_loss.is_finite().then_some(best_loss),
        model,
    })
}

/// Per-feature mean and standard deviation (1 for a constant feature).
fn standardisation(rows: &[(Features, bool)]) -> (Vec<f64>, Vec<f64>) {
    let n = rows.len() as f64;
    let mut mean = vec![0.0; FEATURES];
    for (x, _) in rows {
        for (m, v) in mean.iter_mut().zip(x) {
            *m += v / n;
        }
    }
    let mut scale = [0.0; FEATURES];
    for (x, _) in rows {
        for ((s, v), m) in scale.iter_mut().zip(x).zip(&mean) {
            *s += (v - m) * (v - m) / n;
        }
    }
    // Rounded to f32 here, as the model file stores them, so training sees what scoring will.
    let mean = mean.iter().map(|m| f64::from(*m as f32)).collect();
    let scale = scale.iter().map(|v| if v.sqrt() > 1e-9 { f64::from(v.sqrt() as f32) } else { 1.0 }).collect();
    (mean, scale)
}

fn learning_rate(config: &TrainConfig, step: usize, steps_per_epoch: usize, total_steps: usize) -> f64 {
    let warmup = config.warmup_epochs * steps_per_epoch;
    if step < warmup {
        return config.learning_rate * (step + 1) as f64 / warmup as f64;
    }
    let progress = (step - warmup) as f64 / (total_steps - warmup).max(1) as f64;
    config.learning_rate
        * match config.schedule {
            Schedule::Constant => 1.0,
            Schedule::Step => 0.5f64.powi((progress * 4.0).floor() as i32),
            Schedule::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
        }
}

fn mean_loss(net: &Network, rows: &[(Vec<f64>, bool)], loss: Loss) -> f64 {
    rows.iter().map(|(x, y)| loss.value_and_gradient(net.logit(x), *y).0).sum::<f64>() / rows.len().max(1) as f64
}

/// Dense layers in f64 during training.
#[derive(Debug, Clone)]
struct Network {
    layers: Vec<Layer>,
}

#[derive(Debug, Clone)]
struct Layer {
    inputs: usize,
    outputs: usize,
    weights: Vec<f64>,
    bias: Vec<f64>,
}

impl Network {
    /// Xavier-uniform weights, zero biases.
    fn new(hidden: &[usize], rng: &mut SplitMix64) -> Self {
        let widths: Vec<usize> = std::iter::once(FEATURES).chain(hidden.iter().copied()).chain([1]).collect();
        let layers = widths
            .windows(2)
            .map(|w| {
                let (inputs, outputs) = (w[0], w[1]);
                let limit = (6.0 / (inputs + outputs) as f64).sqrt();
                Layer {
                    inputs,
                    outputs,
                    weights: (0..inputs * outputs).map(|_| (2.0 * rng.unit() - 1.0) * limit).collect(),
                    bias: vec![0.0; outputs],
                }
            })
            .collect();
        Network { layers }
    }

    fn zeros(&self) -> Network {
        let mut z = self.clone();
        z.fill_zero();
        z
    }

    fn fill_zero(&mut self) {
        self.params_mut().for_each(|p| *p = 0.0);
    }

    fn scale(&mut self, k: f64) {
        self.params_mut().for_each(|p| *p *= k);
    }

    fn add_l2(&mut self, net: &Network, l2: f64) {
        for (g, l) in self.layers.iter_mut().zip(&net.layers) {
            g.weights.iter_mut().zip(&l.weights).for_each(|(g, w)| *g += 2.0 * l2 * w);
        }
    }

    fn params_mut(&mut self) -> impl Iterator<Item = &mut f64> {
        self.layers.iter_mut().flat_map(|l| l.weights.iter_mut().chain(l.bias.iter_mut()))
    }

    fn params(&self) -> impl Iterator<Item = &f64> {
        self.layers.iter().flat_map(|l| l.weights.iter().chain(l.bias.iter()))
    }

    /// Activations of every layer (input first); the last holds the logit.
    fn forward(&self, x: &[f64]) -> Vec<Vec<f64>> {
        let mut acts = vec![x.to_vec()];
        let last = self.layers.len() - 1;
        for (i, layer) in self.layers.iter().enumerate() {
            let input = &acts[acts.len() - 1];
            let z: Vec<f64> = layer
                .weights
                .chunks(layer.inputs)
                .zip(&layer.bias)
                .map(|(row, b)| row.iter().zip(input).fold(*b, |z, (w, a)| z + w * a))
                .collect();
            acts.push(if i == last { z } else { z.into_iter().map(f64::tanh).collect() });
        }
        acts
    }

    fn logit(&self, x: &[f64]) -> f64 {
        self.forward(x).last().and_then(|a| a.first().copied()).unwrap_or(0.0)
    }

    /// Adds one example's loss gradient to `grad` (backpropagation).
    fn accumulate_gradient(&self, x: &[f64], y: bool, loss: Loss, grad: &mut Network) {
        let acts = self.forward(x);
        let logit = acts.last().and_then(|a| a.first().copied()).unwrap_or(0.0);
        let mut delta = vec![loss.value_and_gradient(logit, y).1];
        for (i, layer) in self.layers.iter().enumerate().rev() {
            let input = &acts[i];
            let g = &mut grad.layers[i];
            for (o, d) in delta.iter().enumerate() {
                g.bias[o] += d;
                for (j, a) in input.iter().enumerate() {
                    g.weights[o * layer.inputs + j] += d * a;
                }
            }
            if i > 0 {
                // Through the weights, then through the tanh of the layer below.
                delta = (0..layer.inputs)
                    .map(|j| {
                        let back: f64 =
                            delta.iter().enumerate().map(|(o, d)| d * layer.weights[o * layer.inputs + j]).sum();
                        back * (1.0 - input[j] * input[j])
                    })
                    .collect();
            }
        }
    }

    fn into_model(self, config: &TrainConfig, mean: &[f64], scale: &[f64]) -> StopperModel {
        let layers: Vec<Dense> = self
            .layers
            .into_iter()
            .map(|l| Dense {
                inputs: l.inputs,
                outputs: l.outputs,
                weights: l.weights.iter().map(|w| *w as f32).collect(),
                bias: l.bias.iter().map(|b| *b as f32).collect(),
            })
            .collect();
        let bits = layers.iter().flat_map(|l| l.weights.iter().chain(&l.bias)).flat_map(|w| w.to_bits().to_le_bytes());
        StopperModel {
            format: MODEL_FORMAT.into(),
            schema_version: FEATURE_SCHEMA_VERSION,
            features: FEATURE_NAMES.iter().map(|n| n.to_string()).collect(),
            id: format!("{:08x}", fnv1a(bits) >> 32),
            label: config.label.name().into(),
            input_mean: mean.iter().map(|m| *m as f32).collect(),
            input_scale: scale.iter().map(|s| *s as f32).collect(),
            layers,
            training: serde_json::json!({ "config": config }),
        }
    }
}

/// Adam (Kingma & Ba) with the usual defaults.
struct Adam {
    m: Vec<f64>,
    v: Vec<f64>,
    t: i32,
}

impl Adam {
    fn new(net: &Network) -> Self {
        let n = net.params().count();
        Adam { m: vec![0.0; n], v: vec![0.0; n], t: 0 }
    }

    fn step(&mut self, net: &mut Network, grad: &Network, lr: f64) {
        const B1: f64 = 0.9;
        const B2: f64 = 0.999;
        self.t += 1;
        let (c1, c2) = (1.0 - B1.powi(self.t), 1.0 - B2.powi(self.t));
        for (((p, g), m), v) in net.params_mut().zip(grad.params()).zip(&mut self.m).zip(&mut self.v) {
            *m = B1 * *m + (1.0 - B1) * g;
            *v = B2 * *v + (1.0 - B2) * g * g;
            *p -= lr * (*m / c1) / ((*v / c2).sqrt() + 1e-8);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_gradients_match_finite_differences() {
        for loss in
            [Loss::Bce, Loss::WeightedBce { cost_ratio: 3.0 }, Loss::Focal { gamma: 2.0 }, Loss::Focal { gamma: 0.5 }]
        {
            for &z in &[-3.0, -0.4, 0.0, 1.3, 4.0] {
                for y in [false, true] {
                    let h = 1e-6;
                    let numeric =
                        (loss.value_and_gradient(z + h, y).0 - loss.value_and_gradient(z - h, y).0) / (2.0 * h);
                    let analytic = loss.value_and_gradient(z, y).1;
                    assert!((numeric - analytic).abs() < 1e-6, "{loss:?} z={z} y={y}: {numeric} vs {analytic}");
                }
            }
        }
        // Focal with gamma 0 is plain BCE.
        assert_eq!(Loss::Focal { gamma: 0.0 }.value_and_gradient(0.7, true), Loss::Bce.value_and_gradient(0.7, true));
    }

    #[test]
    fn backpropagation_matches_finite_differences() {
        let net = Network::new(&[5, 3], &mut SplitMix64::new(4));
        let x: Vec<f64> = (0..FEATURES).map(|i| (i as f64 * 0.37).sin()).collect();
        let loss = Loss::WeightedBce { cost_ratio: 2.0 };
        let mut grad = net.zeros();
        net.accumulate_gradient(&x, false, loss, &mut grad);
        let analytic: Vec<f64> = grad.params().copied().collect();
        for (k, a) in analytic.iter().enumerate().step_by(7) {
            let value_at = |delta: f64| {
                let mut moved = net.clone();
                if let Some(p) = moved.params_mut().nth(k) {
                    *p += delta;
                }
                loss.value_and_gradient(moved.logit(&x), false).0
            };
            let numeric = (value_at(1e-6) - value_at(-1e-6)) / 2e-6;
            assert!((numeric - a).abs() < 1e-6, "param {k}: {numeric} vs {a}");
        }
    }

    #[test]
    fn schedules_warm_up_then_decay() {
        let config =
            |schedule| TrainConfig { schedule, warmup_epochs: 1, learning_rate: 1.0, ..TrainConfig::default() };
        let at = |schedule, step| learning_rate(&config(schedule), step, 10, 110);
        assert_eq!(at(Schedule::Constant, 0), 0.1);
        assert_eq!(at(Schedule::Constant, 9), 1.0);
        assert_eq!(at(Schedule::Constant, 100), 1.0);
        assert_eq!(at(Schedule::Cosine, 10), 1.0);
        assert!(at(Schedule::Cosine, 109) < 0.01);
        assert_eq!(at(Schedule::Step, 10), 1.0);
        assert_eq!(at(Schedule::Step, 109), 0.125);
    }

    #[test]
    fn rejects_bad_settings() {
        let bad = [
            TrainConfig { learning_rate: 0.0, ..TrainConfig::default() },
            TrainConfig { batch_size: 0, ..TrainConfig::default() },
            TrainConfig { hidden: vec![0], ..TrainConfig::default() },
            TrainConfig { validation_fraction: 1.0, ..TrainConfig::default() },
            TrainConfig { loss: Loss::WeightedBce { cost_ratio: -1.0 }, ..TrainConfig::default() },
        ];
        for config in bad {
            assert!(matches!(train(&[], &config), Err(TrainError::Config(_))), "{config:?}");
        }
        assert!(matches!(train(&[], &TrainConfig::default()), Err(TrainError::NoData(_))));
    }
}
