//! Reading policies: the one loader behind `--rule`, `--policy`, serve's configuration and the
//! policies clients send with a request.
//!
//! A policy is named by a preset, `never`, JSON, a `key = value` list, a certificate written by
//! `stopwise calibrate` or a file holding any of these; a `learned` rule may name its model file
//! (`"model": "stopper.json"`), which is read and embedded before the spec is. Core does no I/O:
//! the caller passes [`Files`], its way of reading files, or [`Files::none`] where no file may be
//! named (a request: only the operator decides what the server reads). Paths resolve against the
//! folder of the file that names them, or the caller's base (a config file's folder, the working
//! directory of a command line).

use std::io;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::certify::{Certificate, CERTIFICATE_KIND};
use crate::learned::{SharedModel, StopperModel};
use crate::rules::confidence::Confidence;
use crate::rules::consistency::Consistency;
use crate::rules::logprob_window::LogprobWindow;
use crate::rules::PolicySpec;

/// Published presets, by name: `(name, spec, where it comes from)`.
pub fn presets() -> Vec<(&'static str, PolicySpec, &'static str)> {
    let consistency = |window| Consistency { window, min_tokens: 0, hedge_filter: true }.into();
    let window = |threshold| LogprobWindow { window: 128, threshold, min_tokens: 0 }.into();
    vec![
        ("dynasor-cot", consistency(2), "Dynasor-CoT: probe every 32 tokens, stop after 2 equal confident answers"),
        ("dynasor-cot-w3", consistency(3), "Dynasor-CoT, milder: 3 equal answers in a row"),
        ("dynasor-cot-w4", consistency(4), "Dynasor-CoT, mildest: 4 equal answers in a row"),
        ("deer", Confidence { threshold: 0.95, min_tokens: 0 }.into(), "DEER: trial answer mean probability >= 0.95"),
        (
            "deepconf-low",
            window(-0.35),
            "DeepConf-low adapted to stopping: aggressive, 128-token window mean log-prob >= -0.35",
        ),
        (
            "deepconf-high",
            window(-0.15),
            "DeepConf-high adapted to stopping: conservative, 128-token window mean log-prob >= -0.15",
        ),
    ]
}

/// At most the first 64 characters of `text`: an error quotes what it could not read, and that may
/// be a whole file.
fn shortened(text: &str) -> String {
    match text.char_indices().nth(64) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

/// ` (did you mean `x`?)` after a misspelt name, or nothing when no known name is close.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Suggestion(Option<String>);

impl Suggestion {
    /// The known name closest to `name` by edit distance, if it is close enough to be a typo
    /// (at most a third of its letters, at least 2, changed).
    pub fn closest(name: &str, known: &[&str]) -> Self {
        let limit = (name.chars().count() / 3).max(2);
        let best = known.iter().map(|k| (strsim::levenshtein(name, k), *k)).filter(|(d, _)| *d <= limit).min();
        Suggestion(best.map(|(_, k)| k.to_owned()))
    }
}

impl std::fmt::Display for Suggestion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(name) => write!(f, " (did you mean `{name}`?)"),
            None => Ok(()),
        }
    }
}

/// Why a policy could not be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PolicyError {
    #[error("unknown preset `{name}`{suggestion}; presets are: {known} (and `never`, which switches stopping off)")]
    UnknownPreset { name: String, known: String, suggestion: Suggestion },
    #[error("policy is not valid JSON or TOML: {0}")]
    Syntax(String),
    #[error("field `{field}`: {why}")]
    Invalid { field: String, why: String },
    #[error("unknown rule family `{name}`{suggestion}; families are: {known}")]
    UnknownFamily { name: String, known: String, suggestion: Suggestion },
    #[error("the `{name}` family needs an argument: name it `{name}:{example}`")]
    FamilyArgument { name: &'static str, example: &'static str },
    #[error("{path}: {why}")]
    File { path: String, why: String },
    #[error("{path}: {source}")]
    InFile { path: String, source: Box<PolicyError> },
    #[error("the policy names the file `{path}`, but a policy sent with a request may not name files (only the server's configuration can)")]
    FileRefused { path: String },
}

/// Reads the file at a path: `Ok(None)` when there is none (the text is then no path).
pub type ReadFile = dyn Fn(&Path) -> io::Result<Option<String>>;

/// How a policy may read the files it names.
#[derive(Clone)]
pub struct Files<'a> {
    read: Option<&'a ReadFile>,
    /// What relative paths are relative to.
    base: PathBuf,
}

impl<'a> Files<'a> {
    /// No file may be named: the policy's text is all there is.
    pub fn none() -> Files<'static> {
        Files { read: None, base: PathBuf::new() }
    }

    /// Files read with `read`, relative paths resolved against `base`.
    pub fn read_with(read: &'a ReadFile, base: impl Into<PathBuf>) -> Files<'a> {
        Files { read: Some(read), base: base.into() }
    }

    /// The same access, relative to the folder holding `file`.
    fn beside(&self, file: &Path) -> Files<'a> {
        Files { read: self.read, base: file.parent().map(Path::to_path_buf).unwrap_or_default() }
    }

    /// The text of the file at `path` (resolved), or `None` when there is none.
    fn read(&self, path: &Path) -> Result<Option<(PathBuf, String)>, PolicyError> {
        let Some(read) = self.read else {
            return Err(PolicyError::FileRefused { path: path.display().to_string() });
        };
        let path = self.base.join(path);
        match read(&path) {
            Ok(text) => Ok(text.map(|text| (path, text))),
            Err(e) => Err(PolicyError::File { path: path.display().to_string(), why: e.to_string() }),
        }
    }

    /// The stopper model in the file at `path`.
    pub fn model(&self, path: &Path) -> Result<SharedModel, PolicyError> {
        let (path, text) = self.read(path)?.ok_or_else(|| no_such_file(&self.base.join(path)))?;
        StopperModel::from_json(&text)
            .map(SharedModel::new)
            .map_err(|e| PolicyError::File { path: path.display().to_string(), why: e.to_string() })
    }
}

fn no_such_file(path: &Path) -> PolicyError {
    PolicyError::File { path: path.display().to_string(), why: "no such file".into() }
}

impl PolicySpec {
    /// Reads a policy given inline (a preset name, `never`, JSON, a `key = value` list or a
    /// certificate) that may not name files; see [`load`].
    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        load(text, &Files::none())
    }
}

/// Reads a policy: a file when `text` names one `files` can read, otherwise the policy itself.
pub fn load(text: &str, files: &Files) -> Result<PolicySpec, PolicyError> {
    let text = text.trim();
    // JSON is never a path; without file access nothing is.
    let file = if text.starts_with('{') || files.read.is_none() { None } else { files.read(Path::new(text))? };
    match file {
        Some((path, content)) => load_read_file(&path, &content, files),
        None => load_text(text, files),
    }
}

/// Reads a policy from the file at `path`, which must exist.
pub fn load_file(path: &Path, files: &Files) -> Result<PolicySpec, PolicyError> {
    let (path, content) = files.read(path)?.ok_or_else(|| no_such_file(&files.base.join(path)))?;
    load_read_file(&path, &content, files)
}

/// The policy in a file read from `path`: paths in it are relative to its folder, errors name it.
fn load_read_file(path: &Path, content: &str, files: &Files) -> Result<PolicySpec, PolicyError> {
    // An empty file is what an interrupted write used to leave; say so, not "unknown preset ``".
    let read = if content.trim().is_empty() {
        Err(PolicyError::Syntax("the file is empty (a policy or a certificate was expected)".into()))
    } else {
        load_text(content, &files.beside(path))
    };
    read.map_err(|e| PolicyError::InFile { path: path.display().to_string(), source: Box::new(e) })
}

/// Reads a policy given as a value (a TOML table or JSON object): a spec or a certificate.
pub fn load_value(mut value: Value, files: &Files) -> Result<PolicySpec, PolicyError> {
    let is_certificate = value.get("kind").and_then(Value::as_str) == Some(CERTIFICATE_KIND);
    embed_models(&mut value, files)?;
    let spec = if is_certificate {
        let certificate: Certificate =
            serde_path_to_error::deserialize(value).map_err(|e| PolicyError::Syntax(format!("certificate: {e}")))?;
        if certificate.version != 1 {
            return Err(PolicyError::Syntax(format!(
                "certificate version {} is not supported (1 is)",
                certificate.version
            )));
        }
        certificate.policy
    } else {
        serde_path_to_error::deserialize(value).map_err(|e| PolicyError::Syntax(e.to_string()))?
    };
    spec.validate()?;
    Ok(spec)
}

fn load_text(text: &str, files: &Files) -> Result<PolicySpec, PolicyError> {
    let text = text.trim();
    if text.starts_with('{') {
        let value = serde_json::from_str(text).map_err(|e| PolicyError::Syntax(e.to_string()))?;
        load_value(value, files)
    } else if text.contains('=') {
        load_value(toml_to_json(text)?, files)
    } else if text == "never" {
        // Not a preset (presets are published settings), but as short to name.
        Ok(PolicySpec::NEVER)
    } else {
        presets().into_iter().find(|(name, _, _)| *name == text).map(|(_, spec, _)| spec).ok_or_else(|| {
            let names: Vec<&str> = presets().iter().map(|p| p.0).chain(["never"]).collect();
            PolicyError::UnknownPreset {
                name: shortened(text),
                known: names[..names.len() - 1].join(", "),
                suggestion: Suggestion::closest(text, &names),
            }
        })
    }
}

/// Replaces the path in every `{"type": "learned", "model": "file.json", ...}` by the model.
fn embed_models(value: &mut Value, files: &Files) -> Result<(), PolicyError> {
    match value {
        Value::Object(map) => {
            if map.get("type").and_then(Value::as_str) == Some("learned") {
                if let Some(Value::String(path)) = map.get("model") {
                    let model = files.model(Path::new(path))?;
                    let model = serde_json::to_value(&model).map_err(|e| PolicyError::Syntax(e.to_string()))?;
                    map.insert("model".into(), model);
                }
            }
            map.values_mut().try_for_each(|v| embed_models(v, files))
        }
        Value::Array(items) => items.iter_mut().try_for_each(|v| embed_models(v, files)),
        _ => Ok(()),
    }
}

/// The inline `key = value` form used on a command line: `type = "budget", max_tokens = 256`.
/// Core stays free of a TOML dependency: callers that read TOML files pass its tables to
/// [`load_value`].
fn toml_to_json(text: &str) -> Result<Value, PolicyError> {
    let mut map = serde_json::Map::new();
    for part in text.split([',', '\n']).map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = part
            .split_once('=')
            .ok_or_else(|| PolicyError::Syntax(format!("expected `key = value`, found `{part}`")))?;
        let value = value.trim();
        let json = serde_json::from_str(value).map_err(|_| {
            PolicyError::Syntax(format!("value of `{}` is not a number, bool or quoted string: {value}", key.trim()))
        })?;
        map.insert(key.trim().to_owned(), json);
    }
    Ok(Value::Object(map))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::learned::tests::stability_model;
    use crate::rules::budget::Budget;
    use crate::rules::combine::Any;
    use crate::rules::hybrid::Hybrid;
    use crate::rules::learned::Learned;

    #[test]
    fn parses_presets_json_and_inline_toml() {
        assert_eq!(PolicySpec::parse("deer"), Ok(Confidence { threshold: 0.95, min_tokens: 0 }.into()));
        assert_eq!(PolicySpec::parse(r#"{"type":"budget","max_tokens":256}"#), Ok(Budget { max_tokens: 256 }.into()));
        assert_eq!(
            PolicySpec::parse(r#"type = "consistency", window = 3"#),
            Ok(Consistency { window: 3, min_tokens: 0, hedge_filter: false }.into())
        );
        let nested = r#"{"type":"hybrid","floor":64,"cap":512,"rule":{"type":"confidence","threshold":0.9}}"#;
        assert_eq!(
            PolicySpec::parse(nested),
            Ok(Hybrid { floor: 64, cap: 512, rule: Box::new(Confidence { threshold: 0.9, min_tokens: 0 }.into()) }
                .into())
        );
    }

    #[test]
    fn toml_tables_deserialize_to_the_same_spec() {
        let spec: PolicySpec = toml::from_str(
            "type = \"any\"\n[[rules]]\ntype = \"budget\"\nmax_tokens = 300\n[[rules]]\ntype = \"confidence\"\nthreshold = 0.9\n",
        )
        .unwrap();
        assert_eq!(
            spec,
            Any { rules: vec![Budget { max_tokens: 300 }.into(), Confidence { threshold: 0.9, min_tokens: 0 }.into()] }
                .into()
        );
    }

    #[test]
    fn rejects_unknown_fields_presets_and_bad_ranges() {
        let err = PolicySpec::parse(r#"{"type":"budget","max_tokens":5,"colour":1}"#).unwrap_err();
        assert!(err.to_string().contains("colour"), "{err}");
        let err = PolicySpec::parse("dynasor").unwrap_err();
        assert!(err.to_string().contains("dynasor-cot"), "{err}");
        let err = PolicySpec::parse(r#"{"type":"confidence","threshold":1.5}"#).unwrap_err();
        assert!(err.to_string().contains("threshold"), "{err}");
        let err = PolicySpec::parse(r#"{"type":"any","rules":[]}"#).unwrap_err();
        assert!(err.to_string().contains("rules"), "{err}");
        // Internally tagged enums buffer their fields, so serde reports the type, not the path.
        let err = PolicySpec::parse(r#"{"type":"budget","max_tokens":"x"}"#).unwrap_err();
        assert!(err.to_string().contains("expected u32"), "{err}");
    }

    #[test]
    fn every_preset_is_valid() {
        for (name, spec, _) in presets() {
            assert_eq!(spec.validate(), Ok(()), "{name}");
            assert_eq!(PolicySpec::parse(name), Ok(spec));
        }
    }

    /// An in-memory file system.
    fn disk(files: &[(&str, String)]) -> impl Fn(&Path) -> io::Result<Option<String>> {
        let files: HashMap<PathBuf, String> = files.iter().map(|(p, t)| (PathBuf::from(p), t.clone())).collect();
        move |path| Ok(files.get(path).cloned())
    }

    fn model_json() -> String {
        serde_json::to_string(&stability_model()).unwrap()
    }

    #[test]
    fn never_is_a_bare_name_as_well_as_json() {
        assert_eq!(PolicySpec::parse("never"), Ok(PolicySpec::NEVER));
        assert_eq!(PolicySpec::parse(r#"{"type":"never"}"#), Ok(PolicySpec::NEVER));
        assert_eq!(PolicySpec::parse("type = \"never\""), Ok(PolicySpec::NEVER));
        assert_eq!(serde_json::to_string(&PolicySpec::NEVER).unwrap(), r#"{"type":"never"}"#);
    }

    #[test]
    fn loads_every_kind_of_file() {
        let read = disk(&[
            ("p/budget.json", r#"{"type":"budget","max_tokens":64}"#.into()),
            ("p/list.txt", "type = \"budget\", max_tokens = 64\n".into()),
            ("p/preset.txt", "deer\n".into()),
            ("p/never.txt", "never".into()),
        ]);
        let files = Files::read_with(&read, "p");
        let budget = PolicySpec::from(Budget { max_tokens: 64 });
        assert_eq!(load("budget.json", &files), Ok(budget.clone()));
        assert_eq!(load("list.txt", &files), Ok(budget.clone()));
        assert_eq!(load("preset.txt", &files), PolicySpec::parse("deer"));
        assert_eq!(load("never.txt", &files), Ok(PolicySpec::NEVER));
        // Not a file: the text is the policy.
        assert_eq!(load("deer", &files), PolicySpec::parse("deer"));
        assert_eq!(load(r#"{"type":"budget","max_tokens":64}"#, &files), Ok(budget));
        let err = load("missing.json", &files).unwrap_err().to_string();
        assert!(err.contains("unknown preset `missing.json`"), "{err}");
    }

    #[test]
    fn a_bad_file_is_named_in_the_error() {
        let read = disk(&[("bad.json", r#"{"type":"budget","max_tokens":0}"#.into())]);
        let err = load("bad.json", &Files::read_with(&read, "")).unwrap_err().to_string();
        assert!(err.starts_with("bad.json: ") && err.contains("max_tokens"), "{err}");
        let broken = |_: &Path| -> io::Result<Option<String>> { Err(io::Error::other("disk on fire")) };
        let err = load("x.json", &Files::read_with(&broken, "")).unwrap_err().to_string();
        assert!(err.contains("x.json") && err.contains("disk on fire"), "{err}");
    }

    #[test]
    fn certificates_load_as_their_policy() {
        let certificate = serde_json::json!({
            "kind": CERTIFICATE_KIND, "version": 1, "policy": {"type": "budget", "max_tokens": 96},
            "label": "budget(96)", "epsilon": 0.1, "delta": 0.05, "risk": "disagreement", "method": "ltt",
            "p_value": "binomial", "items": 10, "n": 10, "empirical_risk": 0.0, "upper_bound": 0.1,
            "token_reduction": 0.2, "candidates": []
        });
        let read = disk(&[("certs/c.json", certificate.to_string())]);
        let files = Files::read_with(&read, "");
        assert_eq!(load("certs/c.json", &files), Ok(Budget { max_tokens: 96 }.into()));
        assert_eq!(PolicySpec::parse(&certificate.to_string()), Ok(Budget { max_tokens: 96 }.into()));
        assert_eq!(load_value(certificate, &Files::none()), Ok(Budget { max_tokens: 96 }.into()));
    }

    #[test]
    fn model_paths_resolve_against_the_file_that_names_them() {
        let expected = PolicySpec::from(Learned { model: SharedModel::new(stability_model()), threshold: 0.5 });
        let read = disk(&[
            ("conf/stopper.json", model_json()),
            // Only beside the policy files: found there, not in `conf/m`.
            ("conf/rules/m/stopper.json", model_json()),
            ("conf/rules/policy.json", r#"{"type":"learned","model":"m/stopper.json","threshold":0.5}"#.into()),
            (
                "conf/rules/nested.json",
                r#"{"type":"any","rules":[{"type":"learned","model":"m/stopper.json","threshold":0.5}]}"#.into(),
            ),
        ]);
        let files = Files::read_with(&read, "conf");
        // Named in the configuration (base `conf`) directly, as JSON, as a `key = value` list, as a value.
        let inline = r#"{"type":"learned","model":"stopper.json","threshold":0.5}"#;
        assert_eq!(load(inline, &files), Ok(expected.clone()));
        assert_eq!(load("type = \"learned\", model = \"stopper.json\", threshold = 0.5", &files), Ok(expected.clone()));
        assert_eq!(load_value(serde_json::from_str(inline).unwrap(), &files), Ok(expected.clone()));
        // Named in a file in `conf/rules`: relative to that file.
        assert_eq!(load("rules/policy.json", &files), Ok(expected.clone()));
        assert_eq!(load("rules/nested.json", &files), Ok(Any { rules: vec![expected] }.into()));
        let err = load(r#"{"type":"learned","model":"gone.json","threshold":0.5}"#, &files).unwrap_err().to_string();
        assert!(err.contains("conf/gone.json") && err.contains("no such file"), "{err}");
        // A file named as such must exist.
        assert_eq!(load_file(Path::new("rules/policy.json"), &files), load("rules/policy.json", &files));
        let err = load_file(Path::new("deer"), &files).unwrap_err().to_string();
        assert!(err.contains("conf/deer: no such file"), "{err}");
    }

    #[test]
    fn a_policy_without_file_access_may_not_name_files() {
        let named = r#"{"type":"learned","model":"stopper.json","threshold":0.5}"#;
        let err = PolicySpec::parse(named).unwrap_err();
        assert_eq!(err, PolicyError::FileRefused { path: "stopper.json".into() });
        assert!(err.to_string().contains("may not name files"), "{err}");
        // A path is not looked up either: it is read as a preset name.
        let err = PolicySpec::parse("/etc/passwd").unwrap_err().to_string();
        assert!(err.contains("unknown preset"), "{err}");
        // An embedded model is no file.
        let embedded = named.replace("\"stopper.json\"", &model_json());
        assert!(PolicySpec::parse(&embedded).is_ok());
    }

    #[test]
    fn misspelt_presets_and_families_get_a_suggestion() {
        let err = load("dynasor-cott", &Files::none()).unwrap_err().to_string();
        assert!(err.contains("unknown preset `dynasor-cott` (did you mean `dynasor-cot`?)"), "{err}");
        let err = load("nevr", &Files::none()).unwrap_err().to_string();
        assert!(err.contains("did you mean `never`?"), "{err}");
        let err = load("zzzzzzzz", &Files::none()).unwrap_err().to_string();
        assert!(!err.contains("did you mean"), "nothing is close: {err}");
        let err = crate::rules::Family::parse("consistensy", &Files::none()).unwrap_err().to_string();
        assert!(err.contains("did you mean `consistency`?"), "{err}");
    }

    #[test]
    fn a_file_that_is_not_a_policy_is_named_not_printed() {
        let garbage = "garbage ".repeat(10_000);
        let reader = move |path: &Path| -> std::io::Result<Option<String>> {
            Ok(match path.file_name().and_then(|n| n.to_str()) {
                Some("empty.json") => Some(String::new()),
                Some("garbage.json") => Some(garbage.clone()),
                _ => None,
            })
        };
        let files = Files::read_with(&reader, Path::new("/cfg"));
        let err = load_file(Path::new("empty.json"), &files).unwrap_err().to_string();
        assert!(err.contains("empty.json") && err.contains("is empty"), "{err}");
        let err = load_file(Path::new("garbage.json"), &files).unwrap_err().to_string();
        assert!(err.contains("garbage.json") && err.len() < 500, "{} bytes: {}", err.len(), &err[..200]);
    }
}
