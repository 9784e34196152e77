//! The learned stopper's model: a small dense network over the [`crate::features`] vector that
//! scores "stopping here keeps the answer" as a probability.
//!
//! The model travels *inside* the policy: the `learned` rule ([`crate::rules::learned`]) embeds the
//! whole [`StopperModel`] (a few hundred numbers), shared through an `Arc` so that sweeping a
//! thousand thresholds does not copy it. Why inline rather than a path: core stays free of I/O
//! (the policy loader, [`crate::policy`], reads a named model file through its caller and embeds
//! it before the spec is read), and a spec or certificate written out is self-contained, so what
//! was certified is exactly what runs.
//!
//! Weights are stored as `f32` (they survive a JSON round trip bit for bit) and evaluated in
//! `f64`, so a model scores the same before and after it is saved.

use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::features::{Features, FEATURES, FEATURE_NAMES, FEATURE_SCHEMA_VERSION};

/// The `format` field of every model file.
pub const MODEL_FORMAT: &str = "stopwise-stopper";

/// A trained stopper: standardisation, dense layers (tanh between them), sigmoid output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StopperModel {
    /// Always [`MODEL_FORMAT`].
    pub format: String,
    /// The feature schema the model was trained on; must equal [`FEATURE_SCHEMA_VERSION`].
    pub schema_version: u32,
    /// Feature names in input order; must equal [`FEATURE_NAMES`].
    pub features: Vec<String>,
    /// Short fingerprint of the weights, shown in rule labels.
    pub id: String,
    /// What the score predicts: `agree` (the probe equals the full answer) or `correct`.
    pub label: String,
    /// Per-feature mean and scale: the network sees `(x - mean) / scale`.
    pub input_mean: Vec<f32>,
    pub input_scale: Vec<f32>,
    pub layers: Vec<Dense>,
    /// Provenance written by the trainer (settings, data, scores); never read when scoring.
    #[serde(default)]
    pub training: serde_json::Value,
}

/// One fully connected layer: `outputs` rows of `inputs` weights, row-major.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dense {
    pub inputs: usize,
    pub outputs: usize,
    pub weights: Vec<f32>,
    pub bias: Vec<f32>,
}

/// Why a model file was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ModelError {
    #[error("not a stopper model: {0}")]
    Syntax(String),
    #[error("not a stopper model: `format` is `{0}`, expected `{MODEL_FORMAT}`")]
    Format(String),
    #[error(
        "the model was trained on feature schema v{found} but this build computes v{FEATURE_SCHEMA_VERSION}; retrain it with `stopwise train`"
    )]
    SchemaVersion { found: u32 },
    #[error("the model's feature list differs from schema v{FEATURE_SCHEMA_VERSION} at position {index}: `{found}` instead of `{expected}`; retrain it with `stopwise train`")]
    FeatureNames { index: usize, found: String, expected: String },
    #[error("corrupt model: {0}")]
    Corrupt(String),
}

impl StopperModel {
    /// Parses and checks a model file's text.
    pub fn from_json(text: &str) -> Result<Self, ModelError> {
        let de = &mut serde_json::Deserializer::from_str(text);
        let model: StopperModel =
            serde_path_to_error::deserialize(de).map_err(|e| ModelError::Syntax(e.to_string()))?;
        model.check()?;
        Ok(model)
    }

    /// Pretty JSON for a model file.
    pub fn to_json(&self) -> String {
        // Strings, finite floats and integers always serialise.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Checks the schema and that the layers chain from the features to one output.
    pub fn check(&self) -> Result<(), ModelError> {
        let corrupt = |why: String| Err(ModelError::Corrupt(why));
        if self.format != MODEL_FORMAT {
            return Err(ModelError::Format(self.format.clone()));
        }
        if self.schema_version != FEATURE_SCHEMA_VERSION {
            return Err(ModelError::SchemaVersion { found: self.schema_version });
        }
        for index in 0..self.features.len().max(FEATURES) {
            let found = self.features.get(index).map_or("(nothing)", String::as_str);
            let expected = FEATURE_NAMES.get(index).copied().unwrap_or("(nothing)");
            if found != expected {
                return Err(ModelError::FeatureNames { index, found: found.into(), expected: expected.into() });
            }
        }
        if self.input_mean.len() != FEATURES || self.input_scale.len() != FEATURES {
            return corrupt(format!("`input_mean` and `input_scale` must hold {FEATURES} numbers"));
        }
        if self.input_scale.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            return corrupt("`input_scale` must be positive and finite".into());
        }
        let mut width = FEATURES;
        for (i, layer) in self.layers.iter().enumerate() {
            if layer.inputs != width || layer.outputs == 0 {
                return corrupt(format!("layers[{i}] takes {} inputs, the previous layer gives {width}", layer.inputs));
            }
            if layer.weights.len() != layer.inputs * layer.outputs || layer.bias.len() != layer.outputs {
                return corrupt(format!(
                    "layers[{i}] must hold {}x{} weights and {} biases",
                    layer.outputs, layer.inputs, layer.outputs
                ));
            }
            width = layer.outputs;
        }
        if self.layers.is_empty() || width != 1 {
            return corrupt("the last layer must have exactly one output".into());
        }
        let numbers = self.input_mean.iter().chain(self.layers.iter().flat_map(|l| l.weights.iter().chain(&l.bias)));
        if numbers.into_iter().any(|x| !x.is_finite()) {
            return corrupt("weights must be finite numbers".into());
        }
        Ok(())
    }

    /// The model's probability for one feature vector.
    pub fn score(&self, x: &Features) -> f64 {
        let mut activations: Vec<f64> = x
            .iter()
            .zip(self.input_mean.iter().zip(&self.input_scale))
            .map(|(&x, (&m, &s))| (x - f64::from(m)) / f64::from(s))
            .collect();
        let last = self.layers.len().saturating_sub(1);
        for (i, layer) in self.layers.iter().enumerate() {
            let next =
                layer.weights.chunks(layer.inputs.max(1)).zip(&layer.bias).map(|(row, &b)| {
                    row.iter().zip(&activations).fold(f64::from(b), |z, (&w, &a)| z + f64::from(w) * a)
                });
            activations = if i == last { next.collect() } else { next.map(f64::tanh).collect() };
        }
        activations.first().map_or(0.0, |&z| sigmoid(z))
    }
}

pub fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

/// A model shared between the specs of a sweep; serialises as the model itself.
#[derive(Clone)]
pub struct SharedModel(pub Arc<StopperModel>);

impl SharedModel {
    pub fn new(model: StopperModel) -> Self {
        SharedModel(Arc::new(model))
    }
}

impl std::ops::Deref for SharedModel {
    type Target = StopperModel;
    fn deref(&self) -> &StopperModel {
        &self.0
    }
}

impl PartialEq for SharedModel {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0 == other.0
    }
}

/// Only the id: a policy's debug output would otherwise print every weight.
impl std::fmt::Debug for SharedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StopperModel({})", self.0.id)
    }
}

impl Serialize for SharedModel {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for SharedModel {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let model = StopperModel::deserialize(deserializer)?;
        model.check().map_err(serde::de::Error::custom)?;
        Ok(SharedModel::new(model))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A logistic model that only looks at `stable_probes` (index 4): p = sigmoid(2 * (run - 2)).
    pub fn stability_model() -> StopperModel {
        let mut weights = vec![0.0; FEATURES];
        weights[4] = 2.0;
        StopperModel {
            format: MODEL_FORMAT.into(),
            schema_version: FEATURE_SCHEMA_VERSION,
            features: FEATURE_NAMES.iter().map(|n| n.to_string()).collect(),
            id: "test".into(),
            label: "agree".into(),
            input_mean: vec![0.0; FEATURES],
            input_scale: vec![1.0; FEATURES],
            layers: vec![Dense { inputs: FEATURES, outputs: 1, weights, bias: vec![-4.0] }],
            training: serde_json::Value::Null,
        }
    }

    #[test]
    fn scores_a_logistic_model() {
        let model = stability_model();
        let mut x = [0.0; FEATURES];
        x[4] = 2.0;
        assert_eq!(model.score(&x), 0.5);
        x[4] = 3.0;
        assert!((model.score(&x) - sigmoid(2.0)).abs() < 1e-15);
    }

    #[test]
    fn round_trips_bit_for_bit() {
        let mut model = stability_model();
        model.layers[0].weights[0] = 0.1 + f32::EPSILON;
        model.input_scale[3] = 1.0 / 3.0;
        assert_eq!(StopperModel::from_json(&model.to_json()), Ok(model));
    }

    #[test]
    fn refuses_a_mismatched_schema_with_a_clear_message() {
        let mut model = stability_model();
        model.schema_version = 99;
        let err = StopperModel::from_json(&model.to_json()).unwrap_err().to_string();
        assert!(err.contains("feature schema v99") && err.contains("retrain"), "{err}");

        let mut model = stability_model();
        model.features.swap(0, 1);
        let err = StopperModel::from_json(&model.to_json()).unwrap_err().to_string();
        assert!(err.contains("position 0: `log_tokens` instead of `tokens`"), "{err}");

        let mut model = stability_model();
        model.features.pop();
        let err = StopperModel::from_json(&model.to_json()).unwrap_err().to_string();
        assert!(err.contains("`(nothing)` instead of `prompt_tokens`"), "{err}");
    }

    #[test]
    fn refuses_corrupt_files() {
        let json = stability_model().to_json();
        let truncated = &json[..json.len() / 2];
        assert!(matches!(StopperModel::from_json(truncated), Err(ModelError::Syntax(_))));
        assert!(matches!(StopperModel::from_json("[1,2]"), Err(ModelError::Syntax(_))));
        let err = StopperModel::from_json(&json.replace("stopwise-stopper", "other")).unwrap_err().to_string();
        assert!(err.contains("`format` is `other`"), "{err}");

        let mut model = stability_model();
        model.layers[0].weights.pop();
        let err = StopperModel::from_json(&model.to_json()).unwrap_err().to_string();
        assert!(err.contains("corrupt model: layers[0] must hold 1x22 weights"), "{err}");

        let mut model = stability_model();
        model.layers[0].outputs = 2;
        model.layers[0].bias.push(0.0);
        model.layers[0].weights.extend([0.0; FEATURES]);
        let err = StopperModel::from_json(&model.to_json()).unwrap_err().to_string();
        assert!(err.contains("exactly one output"), "{err}");

        let mut model = stability_model();
        model.input_scale[0] = 0.0;
        assert!(matches!(StopperModel::from_json(&model.to_json()), Err(ModelError::Corrupt(_))));
        // A non-finite weight is written as null and refused when read.
        let mut model = stability_model();
        model.layers[0].bias[0] = f32::NAN;
        assert!(StopperModel::from_json(&model.to_json()).is_err());
    }
}
