//! Trace format v1: one JSON object per line, one line per (question, full run).
//!
//! A trace records a full run (no early stop) and every probe taken along the way, so that any
//! stop rule at any threshold can be replayed later without generating again. The reasoning
//! text itself is optional: replay never needs it.

use serde::{Deserialize, Serialize};

use crate::answer::Task;

/// The only trace format version this build reads and writes.
pub const TRACE_VERSION: u32 = 1;

/// Largest probe interval a trace may declare: far beyond any context window, and small enough
/// that interval multiples on the sweeps' grids (up to thousands of thresholds) stay far from
/// overflowing a token count.
pub const MAX_PROBE_INTERVAL: u32 = 1 << 20;

/// Largest line accepted by [`parse_line`]; a trace line is a few KiB, a longer one is corrupt.
pub const MAX_LINE_BYTES: usize = 4 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Trace {
    /// Format version; always first in the written object.
    pub v: u32,
    pub id: String,
    /// Data set the item came from (`gsm8k`, `nq`, `math500`, ...).
    pub dataset: String,
    /// How answers are extracted and compared.
    pub task: Task,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub question: Option<String>,
    /// Gold aliases; empty when the item has no gold answer (production traffic).
    #[serde(default)]
    pub gold: Vec<String>,
    pub model: String,
    pub prompt_tokens: u32,
    pub probe: ProbeSettings,
    pub checkpoints: Vec<Checkpoint>,
    #[serde(rename = "final")]
    pub final_: Final,
    /// How `stopwise serve` served the request, for a trace of production traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served: Option<Served>,
}

/// What a served request was and what stopping did to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Served {
    /// The route (client-facing model name) that served it.
    pub route: String,
    /// The response id the client received, which feedback names.
    pub response_id: String,
    /// The policy's label and version ([`crate::rules::PolicySpec::version`]) that served it.
    pub policy: String,
    pub policy_version: String,
    /// When the request arrived, milliseconds since the Unix epoch, and how long it took.
    pub started_ms: u64,
    pub duration_ms: u64,
    /// Where the rule stopped the stream (generated tokens at its checkpoint), if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_at: Option<u32>,
    /// Completion tokens the client received, forced answer included.
    pub delivered_tokens: u32,
    /// Whether the trace is a full run probed at every checkpoint, as `stopwise run` records:
    /// only such a trace can replay any rule (one stopped early, or whose rule skipped probes,
    /// says nothing about what later checkpoints would have answered).
    pub complete: bool,
    /// Whether this is an audit: the same request run to its natural end after the client had
    /// its answer, probed at every checkpoint.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub audit: bool,
}

/// How probes were taken during the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeSettings {
    /// Text appended to the context to induce an answer.
    pub suffix: String,
    /// Most tokens a probe may decode.
    pub max_tokens: u32,
    /// Generated tokens between two probes.
    pub interval: u32,
}

/// One probe, taken after `tokens` generated tokens of the full run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// Generated tokens of the run (not counting any probe) when the probe was taken.
    pub tokens: u32,
    /// Answer extracted from the probe's text (empty when none could be extracted).
    pub answer: String,
    /// Raw text the probe decoded; used by the hedging filter and for re-extraction.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub probe_text: String,
    /// Tokens the probe decoded.
    pub answer_tokens: u32,
    /// Mean probability of the probe's tokens (DEER's trial-answer confidence).
    pub mean_prob: f32,
    /// Smallest probability among the probe's tokens.
    pub min_prob: f32,
    /// Mean log-probability of the run's generated tokens since the previous checkpoint;
    /// `-inf` (written `null`) when the upstream did not report log-probs.
    #[serde(serialize_with = "finite_or_null", deserialize_with = "null_is_neg_infinity")]
    pub segment_logprob: f32,
    /// Mean entropy (nats) of the run's next-token distributions since the previous checkpoint;
    /// `+inf` (written `null`) when unknown.
    #[serde(serialize_with = "finite_or_null", deserialize_with = "null_is_infinity")]
    pub segment_entropy: f32,
}

/// Unknown segment statistics are infinite in memory, where they can never look confident, and
/// `null` in JSON, which has no infinity.
fn finite_or_null<S: serde::Serializer>(value: &f32, serializer: S) -> Result<S::Ok, S::Error> {
    if value.is_finite() {
        serializer.serialize_f32(*value)
    } else {
        serializer.serialize_none()
    }
}

fn null_is_neg_infinity<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<f32, D::Error> {
    Ok(Option::<f32>::deserialize(deserializer)?.unwrap_or(f32::NEG_INFINITY))
}

fn null_is_infinity<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<f32, D::Error> {
    Ok(Option::<f32>::deserialize(deserializer)?.unwrap_or(f32::INFINITY))
}

impl Checkpoint {
    /// The checkpoint as an online request sees it before (or without) a probe: what generation
    /// tells, no answer.
    pub fn unprobed(&self) -> Checkpoint {
        Checkpoint::generated(self.tokens, self.segment_logprob, self.segment_entropy)
    }

    /// A checkpoint of what generation tells (tokens so far, the segment's statistics), with no
    /// probe yet.
    pub fn generated(tokens: u32, segment_logprob: f32, segment_entropy: f32) -> Checkpoint {
        Checkpoint {
            tokens,
            answer: String::new(),
            probe_text: String::new(),
            answer_tokens: 0,
            mean_prob: 0.0,
            min_prob: 0.0,
            segment_logprob,
            segment_entropy,
        }
    }
}

/// How the full run ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Final {
    /// Generated tokens of the full run.
    pub tokens: u32,
    /// Answer extracted from the full run's text.
    pub answer: String,
    /// `stop` (end of generation) or `length` (hit the token limit).
    pub finish_reason: String,
    /// The full reasoning text, when recorded (`stopwise run --keep-text`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Byte offset into `text` at which each checkpoint's probe was taken, recorded with the text:
    /// the reasoning the model had at a checkpoint is `text[..text_offsets[i]]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub text_offsets: Vec<u32>,
}

/// Why a trace line was rejected. The message names the field at fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TraceError {
    #[error("empty line")]
    Empty,
    #[error("line is {0} bytes, more than the limit of {MAX_LINE_BYTES}")]
    TooLong(usize),
    #[error("unsupported trace version {found} (this build reads v{TRACE_VERSION})")]
    Version { found: u64 },
    #[error("missing field `v` (trace format version)")]
    MissingVersion,
    #[error("{0}")]
    Json(String),
    #[error("field `{field}`: {why}")]
    Invalid { field: String, why: String },
}

/// Parses and validates one trace line.
pub fn parse_line(line: &str) -> Result<Trace, TraceError> {
    let line = line.trim_end_matches(['\n', '\r']);
    if line.len() > MAX_LINE_BYTES {
        return Err(TraceError::TooLong(line.len()));
    }
    if line.trim().is_empty() {
        return Err(TraceError::Empty);
    }
    let de = &mut serde_json::Deserializer::from_str(line);
    let trace: Trace = serde_path_to_error::deserialize(de).map_err(|e| version_or_json_error(line, e))?;
    trace.validate()?;
    Ok(trace)
}

/// A wrong version is reported as such even when the rest of the object no longer fits v1.
fn version_or_json_error(line: &str, err: serde_path_to_error::Error<serde_json::Error>) -> TraceError {
    // `field: message` names the field at fault, e.g. `checkpoints[3].mean_prob: invalid type`.
    let message = match err.path().to_string() {
        path if path == "." => err.inner().to_string(),
        path => format!("field `{path}`: {}", err.inner()),
    };
    #[derive(Deserialize)]
    struct VersionOnly {
        v: Option<serde_json::Value>,
    }
    match serde_json::from_str::<VersionOnly>(line) {
        Ok(VersionOnly { v: None }) => TraceError::MissingVersion,
        Ok(VersionOnly { v: Some(v) }) => match v.as_u64() {
            Some(found) if found != u64::from(TRACE_VERSION) => TraceError::Version { found },
            _ => TraceError::Json(message),
        },
        Err(_) => TraceError::Json(message),
    }
}

impl Trace {
    /// Checks what serde cannot: version, ordering and ranges.
    pub fn validate(&self) -> Result<(), TraceError> {
        let invalid = |field: &str, why: String| TraceError::Invalid { field: field.to_owned(), why };
        if self.v != TRACE_VERSION {
            return Err(TraceError::Version { found: u64::from(self.v) });
        }
        if self.id.is_empty() {
            return Err(invalid("id", "must not be empty".into()));
        }
        if self.probe.interval == 0 || self.probe.interval > MAX_PROBE_INTERVAL {
            return Err(invalid("probe.interval", format!("must be between 1 and {MAX_PROBE_INTERVAL}")));
        }
        let mut previous = 0;
        for (i, c) in self.checkpoints.iter().enumerate() {
            let at = |name: &str| format!("checkpoints[{i}].{name}");
            if c.tokens <= previous && i > 0 || c.tokens == 0 {
                return Err(invalid(
                    &at("tokens"),
                    format!("{} is not after the previous checkpoint ({previous})", c.tokens),
                ));
            }
            if c.tokens > self.final_.tokens {
                return Err(invalid(
                    &at("tokens"),
                    format!("{} is past the end of the run ({})", c.tokens, self.final_.tokens),
                ));
            }
            for (name, p) in [("mean_prob", c.mean_prob), ("min_prob", c.min_prob)] {
                if !(0.0..=1.0).contains(&p) {
                    return Err(invalid(&at(name), format!("{p} is not a probability")));
                }
            }
            if c.segment_logprob.is_nan() || c.segment_logprob > 0.0 {
                return Err(invalid(&at("segment_logprob"), format!("{} is not a log-probability", c.segment_logprob)));
            }
            if c.segment_entropy.is_nan() || c.segment_entropy < 0.0 {
                return Err(invalid(&at("segment_entropy"), format!("{} is not an entropy", c.segment_entropy)));
            }
            previous = c.tokens;
        }
        if !self.final_.text_offsets.is_empty() {
            let text = self.final_.text.as_deref().unwrap_or_default();
            if self.final_.text_offsets.len() != self.checkpoints.len() {
                return Err(invalid(
                    "final.text_offsets",
                    format!(
                        "holds {} offsets for {} checkpoints",
                        self.final_.text_offsets.len(),
                        self.checkpoints.len()
                    ),
                ));
            }
            let mut previous = 0;
            for (i, &offset) in self.final_.text_offsets.iter().enumerate() {
                if offset < previous || !text.is_char_boundary(offset as usize) {
                    return Err(invalid(
                        &format!("final.text_offsets[{i}]"),
                        format!("{offset} is not an ascending character boundary of `final.text`"),
                    ));
                }
                previous = offset;
            }
        }
        Ok(())
    }

    /// Serialises as one JSONL line (no trailing newline), `v` first.
    pub fn to_line(&self) -> String {
        // A struct of strings and numbers always serialises; NaN floats become null, which the
        // reader then rejects with a field name, so nothing is silently lost.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Probe tokens spent on checkpoints `0..=index`.
    pub fn probe_tokens_through(&self, index: usize) -> u64 {
        self.checkpoints.iter().take(index + 1).map(|c| u64::from(c.answer_tokens)).sum()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn sample() -> Trace {
        Trace {
            v: 1,
            id: "gsm8k-0".into(),
            dataset: "gsm8k".into(),
            task: Task::Numeric,
            question: Some("2+2?".into()),
            gold: vec!["4".into()],
            model: "m".into(),
            prompt_tokens: 20,
            probe: ProbeSettings { suffix: "\nFinal answer: ".into(), max_tokens: 8, interval: 32 },
            checkpoints: vec![
                Checkpoint {
                    tokens: 32,
                    answer: "3".into(),
                    probe_text: String::new(),
                    answer_tokens: 2,
                    mean_prob: 0.5,
                    min_prob: 0.2,
                    segment_logprob: -1.0,
                    segment_entropy: 1.2,
                },
                Checkpoint {
                    tokens: 64,
                    answer: "4".into(),
                    probe_text: String::new(),
                    answer_tokens: 2,
                    mean_prob: 0.9,
                    min_prob: 0.8,
                    segment_logprob: -0.5,
                    segment_entropy: 0.7,
                },
            ],
            final_: Final {
                tokens: 80,
                answer: "4".into(),
                finish_reason: "stop".into(),
                text: None,
                text_offsets: Vec::new(),
            },
            served: None,
        }
    }

    #[test]
    fn unknown_segment_statistics_round_trip_as_null() {
        let mut t = sample();
        t.checkpoints[0].segment_logprob = f32::NEG_INFINITY;
        t.checkpoints[0].segment_entropy = f32::INFINITY;
        let line = t.to_line();
        assert!(line.contains(r#""segment_logprob":null,"segment_entropy":null"#), "{line}");
        assert_eq!(parse_line(&line), Ok(t));
    }

    #[test]
    fn a_served_trace_round_trips() {
        let mut t = sample();
        t.served = Some(Served {
            route: "smol".into(),
            response_id: "chatcmpl-1".into(),
            policy: "consistency(2)".into(),
            policy_version: "00ff".into(),
            started_ms: 1,
            duration_ms: 2,
            stopped_at: Some(64),
            delivered_tokens: 66,
            complete: false,
            audit: false,
        });
        assert_eq!(parse_line(&t.to_line()), Ok(t));
    }

    #[test]
    fn round_trips_with_version_first() {
        let t = sample();
        let line = t.to_line();
        assert!(line.starts_with("{\"v\":1,"), "{line}");
        assert_eq!(parse_line(&line), Ok(t));
    }

    #[test]
    fn rejects_unknown_version_even_with_other_fields() {
        let line = sample().to_line().replacen("\"v\":1", "\"v\":2", 1);
        assert_eq!(parse_line(&line), Err(TraceError::Version { found: 2 }));
        let line = r#"{"v":7,"something":"else"}"#;
        assert_eq!(parse_line(line), Err(TraceError::Version { found: 7 }));
    }

    #[test]
    fn rejects_missing_version_empty_and_truncated() {
        assert_eq!(parse_line(r#"{"id":"x"}"#), Err(TraceError::MissingVersion));
        assert_eq!(parse_line("  "), Err(TraceError::Empty));
        let line = sample().to_line();
        let cut = &line[..line.len() / 2];
        assert!(matches!(parse_line(cut), Err(TraceError::Json(m)) if m.contains("EOF")));
    }

    #[test]
    fn a_probe_interval_out_of_range_is_refused() {
        for interval in [0, MAX_PROBE_INTERVAL + 1, 1 << 27] {
            let line = sample().to_line().replace("\"interval\":32", &format!("\"interval\":{interval}"));
            let err = parse_line(&line).unwrap_err().to_string();
            assert!(err.contains("probe.interval"), "{interval}: {err}");
        }
    }

    #[test]
    fn wrong_type_names_the_field() {
        let line = sample().to_line().replace("\"prompt_tokens\":20", "\"prompt_tokens\":\"many\"");
        let err = parse_line(&line).unwrap_err().to_string();
        assert!(err.contains("field `prompt_tokens`: invalid type"), "{err}");
    }

    #[test]
    fn rejects_checkpoints_out_of_order_and_bad_probabilities() {
        let mut t = sample();
        t.checkpoints[1].tokens = 10;
        let err = parse_line(&t.to_line()).unwrap_err().to_string();
        assert!(err.contains("checkpoints[1].tokens"), "{err}");
        let mut t = sample();
        t.checkpoints[0].mean_prob = 1.5;
        let err = parse_line(&t.to_line()).unwrap_err().to_string();
        assert!(err.contains("checkpoints[0].mean_prob"), "{err}");
    }

    #[test]
    fn text_offsets_must_point_into_the_text() {
        let mut t = sample();
        t.final_.text = Some("2+2 is… 4".into());
        t.final_.text_offsets = vec![3, 9];
        assert_eq!(parse_line(&t.to_line()), Ok(t.clone()));
        t.final_.text_offsets = vec![3];
        let err = parse_line(&t.to_line()).unwrap_err().to_string();
        assert!(err.contains("final.text_offsets") && err.contains("1 offsets for 2 checkpoints"), "{err}");
        t.final_.text_offsets = vec![3, 8];
        let err = parse_line(&t.to_line()).unwrap_err().to_string();
        assert!(err.contains("final.text_offsets[1]"), "{err}");
        t.final_.text = None;
        t.final_.text_offsets = vec![0, 0];
        assert!(parse_line(&t.to_line()).is_ok(), "empty prefixes of a missing text are fine");
        t.final_.text_offsets = vec![0, 1];
        assert!(parse_line(&t.to_line()).is_err());
    }

    #[test]
    fn rejects_overlong_line_without_parsing_it() {
        let line = "x".repeat(MAX_LINE_BYTES + 1);
        assert_eq!(parse_line(&line), Err(TraceError::TooLong(MAX_LINE_BYTES + 1)));
    }
}
