//! Dataset readers: GSM8K, NQ-open, MATH-500 and a generic `{id, question, gold:[...]}` layout.

use std::io::BufRead;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::Value;
use stopwise_core::answer::gold_from_gsm8k_solution;

/// One question with its gold aliases.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub id: String,
    pub question: String,
    pub gold: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Gsm8k,
    Nq,
    Math,
    Generic,
}

impl Format {
    /// Guesses the layout from the first line's fields.
    fn detect(first: &Value) -> Option<Format> {
        let has = |k: &str| first.get(k).is_some();
        if has("gold") {
            Some(Format::Generic)
        } else if has("problem") && has("answer") {
            Some(Format::Math)
        } else if first.get("answer").is_some_and(Value::is_array) {
            Some(Format::Nq)
        } else if first.get("answer").is_some_and(Value::is_string) {
            Some(Format::Gsm8k)
        } else {
            None
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Format::Gsm8k => "gsm8k",
            Format::Nq => "nq",
            Format::Math => "math500",
            Format::Generic => "generic",
        }
    }
}

/// Reads a dataset file; ids default to `<format>-<line index>`.
pub fn read(path: &Path, format: Option<Format>) -> Result<(Format, Vec<Item>)> {
    let file = std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    parse(std::io::BufReader::new(file), &path.display().to_string(), format)
}

/// Parses dataset lines; `name` is what errors call the source.
pub fn parse(source: impl BufRead, name: &str, format: Option<Format>) -> Result<(Format, Vec<Item>)> {
    let mut items = Vec::new();
    let mut format = format;
    for (index, line) in source.lines().enumerate() {
        let at = || format!("{name}:{}", index + 1);
        let line = line.with_context(at)?;
        if line.trim().is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(&line).with_context(at)?;
        let format = match format {
            Some(f) => f,
            None => *format.insert(
                Format::detect(&value)
                    .with_context(|| format!("{}: cannot tell the dataset layout; pass --format", at()))?,
            ),
        };
        let text = |key: &str| -> Result<String> {
            value
                .get(key)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .with_context(|| format!("{}: field `{key}` missing or not a string", at()))
        };
        let list = |key: &str| -> Result<Vec<String>> {
            let values = value
                .get(key)
                .and_then(Value::as_array)
                .with_context(|| format!("{}: field `{key}` missing or not a list", at()))?;
            values
                .iter()
                .map(|v| {
                    v.as_str().map(str::to_owned).with_context(|| format!("{}: field `{key}` holds a non-string", at()))
                })
                .collect()
        };
        let default_id = format!("{}-{index}", format.name());
        let item = match format {
            Format::Gsm8k => {
                let solution = text("answer")?;
                let gold = gold_from_gsm8k_solution(&solution)
                    .with_context(|| format!("{}: field `answer` has no `#### N` line", at()))?;
                Item { id: default_id, question: text("question")?, gold: vec![gold] }
            }
            Format::Nq => Item { id: default_id, question: text("question")?, gold: list("answer")? },
            Format::Math => Item {
                id: text("unique_id").unwrap_or(default_id),
                question: text("problem")?,
                gold: vec![text("answer")?],
            },
            Format::Generic => Item { id: text("id")?, question: text("question")?, gold: list("gold")? },
        };
        items.push(item);
    }
    let Some(format) = format else { bail!("{name}: the dataset is empty") };
    Ok((format, items))
}
