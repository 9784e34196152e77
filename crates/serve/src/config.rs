//! `stopwise.toml`: where to listen, and for each model name the upstream that generates, the stop
//! policy and how to probe. Unknown keys are errors (a typo must not silently change behaviour);
//! `STOPWISE_*` environment variables and command-line flags override the file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use stopwise_core::answer::Task;
use stopwise_core::policy::{self, Files};
use stopwise_core::rules::PolicySpec;

/// `upstream` value that selects the in-process engine.
pub const EMBEDDED: &str = "embedded";
/// Model name of the route served when no route is configured.
pub const DEFAULT_MODEL_NAME: &str = "default";
/// The policy of a route that names none: Dynasor-CoT (two equal, non-hedging probed answers).
pub const DEFAULT_POLICY: &str = "dynasor-cot";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_BODY_LIMIT: usize = 8 * 1024 * 1024;
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 120_000;
/// Default cap on a non-streamed upstream reply.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 64 << 20;
pub const DEFAULT_ANSWER_TEMPLATE: &str = "\n\n**Final Answer**: {answer}";

/// The file as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub listen: Option<String>,
    /// Largest request body in bytes (default 8 MiB); larger bodies get 413.
    pub body_limit: Option<usize>,
    pub admin_token: Option<String>,
    #[serde(default)]
    pub engine: EngineConfig,
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    #[serde(default)]
    pub store: StoreConfig,
    /// The folder relative `policy_file` paths are read from: the config file's own.
    #[serde(skip)]
    pub base_dir: Option<PathBuf>,
}

/// The embedded engine, used by routes whose upstream is `embedded`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    /// Model name (see `stopwise model list`) or GGUF file; default: the fetched default model.
    pub model: Option<PathBuf>,
    /// Requests decoded together (default 4).
    pub parallel: Option<u32>,
    pub threads: Option<u32>,
    /// Requests allowed to wait for a free sequence; beyond that the server answers 429.
    pub queue_limit: Option<usize>,
    /// Context per sequence in tokens (default 2048).
    pub context: Option<u32>,
}

/// Where served traces and feedback are kept.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `sqlite://PATH`, `postgres://USER:PASSWORD@HOST/DB` (replicas sharing one database), or
    /// `off`. Default: `sqlite://$STOPWISE_HOME/stopwise.db`.
    pub url: Option<String>,
    /// Traces waiting to be written, at most; beyond it a trace is dropped and counted, never
    /// waited for. Default 10000.
    pub queue: Option<usize>,
    /// How long feedback naming a response whose trace is not in the store yet waits for it
    /// before the answer is 404. Default 5000.
    pub feedback_grace_ms: Option<u64>,
    /// How often a replica reads the settings other replicas switched their routes to (fallback,
    /// promotion, an operator's choice). Default 2000.
    pub sync_ms: Option<u64>,
}

pub const DEFAULT_STORE_QUEUE: usize = 10_000;
pub const DEFAULT_FEEDBACK_GRACE_MS: u64 = 5_000;

/// The store as resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreSettings {
    /// `None`: no store (`url = "off"`).
    pub url: Option<String>,
    pub queue: usize,
    pub feedback_grace: std::time::Duration,
    pub sync: std::time::Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// The `model` clients ask for.
    pub model: String,
    /// `embedded`, or the base URL of an OpenAI-compatible server (`http://127.0.0.1:8000/v1`,
    /// or https://).
    pub upstream: String,
    /// The model name sent upstream (default: the client's).
    pub upstream_model: Option<String>,
    /// The environment variable holding the upstream's API key, sent as `Authorization: Bearer`
    /// (hosted endpoints); the key itself never sits in the file.
    pub api_key_env: Option<String>,
    /// Preset name, `never` (no stopping), JSON text or `key = value` list, or a TOML table.
    pub policy: Option<PolicyField>,
    /// A certificate written by `stopwise calibrate` (or a policy JSON file) as the policy;
    /// relative to this file's folder.
    pub policy_file: Option<PathBuf>,
    /// How probed answers are extracted and compared: `text` (default), `numeric` or `math`.
    pub task: Option<Task>,
    #[serde(default)]
    pub probe: ProbeConfig,
    /// What the client receives when stopwise stops; `{answer}` is replaced by the probed answer.
    pub answer_template: Option<String>,
    /// An HTTP upstream that sends nothing for this long is given up (504; an SSE error event once
    /// streaming). Default 120000.
    pub idle_timeout_ms: Option<u64>,
    /// Longest SSE line or event an HTTP upstream may send (an SSE error event and the upstream
    /// request cancelled beyond it). Default 4 MiB.
    pub max_event_bytes: Option<usize>,
    /// Largest non-streamed reply an HTTP upstream may send (502 beyond it). Default 64 MiB.
    pub max_response_bytes: Option<usize>,
    /// When the upstream lacks a capability the policy needs: `refuse` to start (default), or
    /// `degrade` to serving the route without stopping.
    #[serde(default)]
    pub on_missing_capability: OnMissing,
    /// Keep the prompt's last user message and the completion's text in the route's traces
    /// (default off: traces hold token counts, probed answers and the final answer only).
    #[serde(default)]
    pub store_text: bool,
    /// Audits: requests run again to their natural end after the client has its answer.
    #[serde(default)]
    pub audit: AuditConfig,
    /// The live estimate over audited requests, with fallback and promotion.
    pub online: Option<OnlineConfig>,
}

/// Which requests are audited, and how many audits run at once.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Share of requests audited, 0 to 1 (default 0.05). Every `1/fraction`-th request, exactly.
    #[serde(default = "default_audit_fraction")]
    pub fraction: f64,
    /// Audits running at once, at most; a request due for an audit beyond it is not audited
    /// (counted as dropped). Default 1.
    #[serde(default = "default_audit_concurrency")]
    pub max_concurrent: usize,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig { fraction: default_audit_fraction(), max_concurrent: default_audit_concurrency() }
    }
}

fn default_audit_fraction() -> f64 {
    0.05
}
fn default_audit_concurrency() -> usize {
    1
}

/// `[routes.online]`: what the live estimator certifies, over which window.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnlineConfig {
    /// Risk budget and failure probability, as `stopwise calibrate` takes them.
    pub epsilon: f64,
    #[serde(default = "default_online_delta")]
    pub delta: f64,
    /// `disagreement` (default; no gold needed) or `em-drop` (audits with gold from feedback).
    #[serde(default = "default_online_risk")]
    pub risk: stopwise_core::certify::Risk,
    /// Most recent audits the estimate is over (default 500).
    #[serde(default = "default_online_window")]
    pub window: usize,
    /// `propose` (default: an operator approves), `auto` or `off`.
    #[serde(default)]
    pub promote: stopwise_core::online::Promote,
    /// Candidate settings from the most aggressive to the safest (each as `policy` takes one);
    /// the route's policy must be one of them. No stopping ends the ladder. Default: the route's
    /// policy alone.
    #[serde(default)]
    pub ladder: Vec<PolicyField>,
}

fn default_online_delta() -> f64 {
    0.05
}
fn default_online_risk() -> stopwise_core::certify::Risk {
    stopwise_core::certify::Risk::Disagreement
}
fn default_online_window() -> usize {
    500
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnMissing {
    #[default]
    Refuse,
    Degrade,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PolicyField {
    Text(String),
    /// Read as a value so that the loader resolves a learned model's path against the file.
    Table(serde_json::Value),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeConfig {
    /// Probe after every `interval` generated tokens.
    #[serde(default = "default_interval")]
    pub interval: u32,
    /// Appended to the partial answer to make the model state its answer.
    #[serde(default = "default_suffix")]
    pub suffix: String,
    #[serde(default = "default_probe_max_tokens")]
    pub max_tokens: u32,
    /// At most this many probes per request; later checkpoints go unprobed (the rule cannot
    /// stop there), which bounds what a long generation can spend on probes.
    #[serde(default = "default_max_probes")]
    pub max_probes: u32,
    /// A probe slower than this is abandoned (the request goes on as if it had not been made).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// How an HTTP upstream is asked to continue the partial answer.
    #[serde(default)]
    pub mode: ProbeMode,
    /// Where HTTP probes go (default: the route's upstream). Servers that run one request at a
    /// time (llama-cpp-python) need a second instance here, or the probe waits for the stream.
    pub upstream: Option<String>,
    /// Reasoning models that stream their reasoning apart (`reasoning_content`): the probe puts
    /// it back between these, closing the block so that the model answers.
    #[serde(default = "default_reasoning_open")]
    pub reasoning_open: String,
    #[serde(default = "default_reasoning_close")]
    pub reasoning_close: String,
    /// `chatml_completions` only: the system message the upstream's chat template adds when the
    /// request has none, so that the probe's prompt matches the stream's.
    pub default_system: Option<String>,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        Self {
            interval: default_interval(),
            suffix: default_suffix(),
            max_tokens: default_probe_max_tokens(),
            max_probes: default_max_probes(),
            timeout_ms: default_timeout_ms(),
            mode: ProbeMode::default(),
            upstream: None,
            reasoning_open: default_reasoning_open(),
            reasoning_close: default_reasoning_close(),
            default_system: None,
        }
    }
}

/// How a probe reaches an HTTP upstream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeMode {
    /// Chat completion whose last message is the partial assistant answer plus the suffix, with
    /// `continue_final_message: true, add_generation_prompt: false` (vLLM, SGLang, llama-server).
    #[default]
    ContinueFinalMessage,
    /// Raw `POST /completions` with the conversation rendered as ChatML and the assistant turn
    /// left open (llama-cpp-python, whose chat endpoint cannot continue a message).
    ChatmlCompletions,
}

fn default_interval() -> u32 {
    32
}
fn default_suffix() -> String {
    "\n\nFinal answer: ".into()
}
fn default_probe_max_tokens() -> u32 {
    12
}
fn default_timeout_ms() -> u64 {
    10_000
}
fn default_max_probes() -> u32 {
    // One default: replay and certification assume it too.
    stopwise_core::replay::Limits::DEFAULT_MAX_PROBES
}
fn default_reasoning_open() -> String {
    "<think>\n".into()
}
fn default_reasoning_close() -> String {
    "\n</think>\n\n".into()
}

/// Overrides from flags; each wins over its `STOPWISE_*` variable, which wins over the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub upstream: Option<String>,
    pub model_name: Option<String>,
    pub policy: Option<String>,
    /// The embedded engine's model, replacing `[engine] model`.
    pub model: Option<PathBuf>,
}

/// Why the configuration cannot be used; the message names the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{key}: {why}")]
    Invalid { key: String, why: String },
}

fn invalid(key: impl Into<String>, why: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.into(), why: why.into() }
}

/// Everything the server needs, checked.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub body_limit: usize,
    pub admin_token: Option<String>,
    pub engine: EngineConfig,
    pub routes: Vec<Route>,
    pub store: StoreSettings,
}

#[derive(Debug, Clone)]
pub struct Route {
    pub model: String,
    pub upstream: Upstream,
    pub upstream_model: Option<String>,
    /// Sent upstream as a bearer token.
    pub api_key: Option<String>,
    pub policy: PolicySpec,
    pub task: Task,
    pub probe: ProbeConfig,
    pub answer_template: String,
    pub idle_timeout: std::time::Duration,
    pub max_event_bytes: usize,
    pub max_response_bytes: usize,
    pub on_missing_capability: OnMissing,
    pub store_text: bool,
    pub audit: AuditConfig,
    /// The estimator's settings and ladder, and the route policy's place on it.
    pub online: Option<(stopwise_core::online::OnlineSettings, Vec<PolicySpec>, usize)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    Embedded,
    /// Base URL without a trailing slash, e.g. `http://127.0.0.1:8000/v1`.
    Http(String),
}

impl std::fmt::Display for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Upstream::Embedded => f.write_str(EMBEDDED),
            Upstream::Http(base) => f.write_str(base),
        }
    }
}

impl Upstream {
    fn parse(key: &str, text: &str) -> Result<Self, ConfigError> {
        if text == EMBEDDED {
            return Ok(Upstream::Embedded);
        }
        let has_host = reqwest::Url::parse(text).is_ok_and(|url| url.host_str().is_some_and(|h| !h.is_empty()));
        if !(text.starts_with("http://") || text.starts_with("https://")) || !has_host {
            return Err(invalid(key, format!("`{text}` is neither `embedded` nor an http(s):// base URL with a host")));
        }
        Ok(Upstream::Http(text.trim_end_matches('/').to_owned()))
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        let mut config = Self::parse(&text).map_err(|message| ConfigError::Parse { path: path.to_owned(), message })?;
        config.base_dir = path.parent().map(Path::to_owned);
        Ok(config)
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Applies environment variables (read through `env`, so tests need not touch the process
    /// environment) and flags, and checks everything.
    pub fn resolve(self, overrides: &Overrides, env: impl Fn(&str) -> Option<String>) -> Result<Settings, ConfigError> {
        let pick = |flag: &Option<String>, var: &str, file: Option<String>| flag.clone().or_else(|| env(var)).or(file);
        let listen = pick(&overrides.listen, "STOPWISE_LISTEN", self.listen).unwrap_or_else(|| DEFAULT_LISTEN.into());
        let listen = listen.parse().map_err(|e| invalid("listen", format!("`{listen}`: {e}")))?;
        let body_limit = match env("STOPWISE_BODY_LIMIT") {
            Some(v) => v.parse().map_err(|_| invalid("STOPWISE_BODY_LIMIT", format!("`{v}` is not a byte count")))?,
            None => self.body_limit.unwrap_or(DEFAULT_BODY_LIMIT),
        };
        let admin_token = env("STOPWISE_ADMIN_TOKEN").or(self.admin_token);
        let upstream = pick(&overrides.upstream, "STOPWISE_UPSTREAM", None);
        let policy = pick(&overrides.policy, "STOPWISE_POLICY", None);
        let mut routes = self.routes;
        if routes.is_empty() {
            routes.push(RouteConfig {
                model: overrides.model_name.clone().unwrap_or_else(|| DEFAULT_MODEL_NAME.into()),
                upstream: upstream.unwrap_or_else(|| EMBEDDED.into()),
                upstream_model: None,
                api_key_env: None,
                policy: None,
                policy_file: None,
                task: None,
                probe: ProbeConfig::default(),
                answer_template: None,
                idle_timeout_ms: None,
                max_event_bytes: None,
                max_response_bytes: None,
                on_missing_capability: OnMissing::default(),
                store_text: false,
                audit: AuditConfig::default(),
                online: None,
            });
        } else if upstream.is_some() || overrides.model_name.is_some() {
            return Err(invalid(
                "--upstream/--model-name",
                "the config file already has [[routes]]; set the upstream and model name there",
            ));
        }
        let base_dir = self.base_dir.unwrap_or_default();
        let routes = routes
            .into_iter()
            .enumerate()
            .map(|(i, mut route)| {
                // The flag or variable replaces the file's policy, whichever way the file gave it; a
                // path it names is relative to the working directory, not to the file.
                let policy_base = match &policy {
                    Some(text) => {
                        route.policy_file = None;
                        route.policy = Some(PolicyField::Text(text.clone()));
                        PathBuf::new()
                    }
                    None => base_dir.clone(),
                };
                let api_key = match &route.api_key_env {
                    None => None,
                    Some(var) => Some(env(var).ok_or_else(|| {
                        invalid(format!("routes[{i}].api_key_env"), format!("the variable `{var}` is not set"))
                    })?),
                };
                Ok(Route { api_key, ..Route::resolve(i, route, &base_dir, &policy_base)? })
            })
            .collect::<Result<Vec<_>, _>>()?;
        for (i, route) in routes.iter().enumerate() {
            if routes[..i].iter().any(|r| r.model == route.model) {
                return Err(invalid(format!("routes[{i}].model"), format!("`{}` is routed twice", route.model)));
            }
        }
        let engine = EngineConfig { model: overrides.model.clone().or(self.engine.model), ..self.engine };
        let store = self.store.resolve(&env)?;
        Ok(Settings { listen, body_limit, admin_token, engine, routes, store })
    }
}

impl StoreConfig {
    /// `STOPWISE_STORE` replaces the file's URL; `STOPWISE_HOME` places the default.
    fn resolve(self, env: &impl Fn(&str) -> Option<String>) -> Result<StoreSettings, ConfigError> {
        let url = match env("STOPWISE_STORE").or(self.url) {
            Some(url) if url == "off" => None,
            Some(url) => {
                let known = ["sqlite:", "postgres://", "postgresql://"].iter().any(|s| url.starts_with(s));
                if !known {
                    let shown = stopwise_db::redacted(&url);
                    return Err(invalid("store.url", format!("`{shown}` is not sqlite://PATH, postgres://… or off")));
                }
                Some(url)
            }
            None => {
                let home = env("STOPWISE_HOME").filter(|h| !h.is_empty()).map(PathBuf::from);
                Some(stopwise_db::default_url(&home.unwrap_or_else(stopwise_engine::fetch::stopwise_home)))
            }
        };
        if self.queue == Some(0) {
            return Err(invalid("store.queue", "must be at least 1"));
        }
        if self.sync_ms == Some(0) {
            return Err(invalid("store.sync_ms", "must be at least 1"));
        }
        Ok(StoreSettings {
            url,
            queue: self.queue.unwrap_or(DEFAULT_STORE_QUEUE),
            feedback_grace: std::time::Duration::from_millis(
                self.feedback_grace_ms.unwrap_or(DEFAULT_FEEDBACK_GRACE_MS),
            ),
            sync: std::time::Duration::from_millis(self.sync_ms.unwrap_or(2000)),
        })
    }
}

impl Route {
    /// `base_dir` is the config file's folder, which relative paths in it (a `policy_file`, a
    /// learned model's file) are relative to; `policy_base` is what a `policy` naming a file is
    /// relative to (the working directory when the policy came from a flag or variable).
    fn resolve(i: usize, route: RouteConfig, base_dir: &Path, policy_base: &Path) -> Result<Self, ConfigError> {
        let key = |field: &str| format!("routes[{i}].{field}");
        let read = stopwise_store::read_if_file;
        let policy = match (route.policy, &route.policy_file) {
            (Some(_), Some(_)) => return Err(invalid(key("policy_file"), "give `policy` or `policy_file`, not both")),
            (None, Some(file)) => policy::load_file(file, &Files::read_with(&read, base_dir))
                .map_err(|e| invalid(key("policy_file"), e.to_string()))?,
            (None, None) => PolicySpec::parse(DEFAULT_POLICY).map_err(|e| invalid(key("policy"), e.to_string()))?,
            (Some(PolicyField::Text(text)), None) => policy::load(&text, &Files::read_with(&read, policy_base))
                .map_err(|e| invalid(key("policy"), e.to_string()))?,
            (Some(PolicyField::Table(value)), None) => policy::load_value(value, &Files::read_with(&read, base_dir))
                .map_err(|e| invalid(key("policy"), e.to_string()))?,
        };
        let probe = route.probe;
        if probe.interval == 0 || probe.max_tokens == 0 || probe.max_probes == 0 {
            return Err(invalid(key("probe"), "interval, max_tokens and max_probes must be at least 1"));
        }
        if route.model.trim().is_empty() {
            return Err(invalid(key("model"), "must not be empty"));
        }
        if route.upstream_model.as_deref().is_some_and(|m| m.trim().is_empty()) {
            return Err(invalid(key("upstream_model"), "must not be empty"));
        }
        if route.idle_timeout_ms == Some(0) {
            return Err(invalid(key("idle_timeout_ms"), "must be at least 1"));
        }
        if probe.timeout_ms == 0 {
            return Err(invalid(key("probe.timeout_ms"), "must be at least 1"));
        }
        for (name, value) in
            [("max_event_bytes", route.max_event_bytes), ("max_response_bytes", route.max_response_bytes)]
        {
            if value == Some(0) {
                return Err(invalid(key(name), "must be at least 1"));
            }
        }
        if probe.suffix.is_empty() {
            return Err(invalid(key("probe.suffix"), "must not be empty"));
        }
        if let Some(url) = &probe.upstream {
            Upstream::parse(&key("probe.upstream"), url)?;
        }
        let audit = &route.audit;
        if !(0.0..=1.0).contains(&audit.fraction) {
            return Err(invalid(key("audit.fraction"), "must be between 0 and 1"));
        }
        if audit.max_concurrent == 0 {
            return Err(invalid(key("audit.max_concurrent"), "must be at least 1"));
        }
        let upstream = Upstream::parse(&key("upstream"), &route.upstream)?;
        if audit.fraction > 0.0 && upstream != Upstream::Embedded && route.audit != AuditConfig::default() {
            return Err(invalid(key("audit"), "audits run on embedded routes only in this version"));
        }
        let online = match route.online {
            None => None,
            Some(online) => {
                let ladder = if online.ladder.is_empty() {
                    vec![policy.clone()]
                } else {
                    online
                        .ladder
                        .into_iter()
                        .enumerate()
                        .map(|(j, field)| {
                            let at = key(&format!("online.ladder[{j}]"));
                            match field {
                                PolicyField::Text(text) => policy::load(&text, &Files::read_with(&read, base_dir)),
                                PolicyField::Table(value) => {
                                    policy::load_value(value, &Files::read_with(&read, base_dir))
                                }
                            }
                            .map_err(|e| invalid(at, e.to_string()))
                        })
                        .collect::<Result<Vec<_>, _>>()?
                };
                let mut ladder = ladder;
                if ladder.last() != Some(&PolicySpec::NEVER) {
                    ladder.push(PolicySpec::NEVER);
                }
                let active = ladder.iter().position(|p| p == &policy).ok_or_else(|| {
                    invalid(key("online.ladder"), format!("the route's policy {} is not on it", policy.label()))
                })?;
                let settings = stopwise_core::online::OnlineSettings {
                    epsilon: online.epsilon,
                    delta: online.delta,
                    risk: online.risk,
                    window: online.window,
                    promote: online.promote,
                    limits: stopwise_core::replay::Limits { max_probes: probe.max_probes },
                };
                stopwise_core::online::Estimator::new(ladder.clone(), active, settings)
                    .map_err(|e| invalid(key("online"), e.to_string()))?;
                if audit.fraction == 0.0 {
                    return Err(invalid(key("online"), "the estimator needs audits: set audit.fraction above 0"));
                }
                Some((settings, ladder, active))
            }
        };
        let answer_template = route.answer_template.unwrap_or_else(|| DEFAULT_ANSWER_TEMPLATE.into());
        if !answer_template.contains("{answer}") {
            return Err(invalid(key("answer_template"), "must contain `{answer}`"));
        }
        Ok(Route {
            upstream,
            model: route.model,
            upstream_model: route.upstream_model,
            api_key: None,
            policy,
            task: route.task.unwrap_or(Task::Text),
            probe,
            answer_template,
            idle_timeout: std::time::Duration::from_millis(route.idle_timeout_ms.unwrap_or(DEFAULT_IDLE_TIMEOUT_MS)),
            max_event_bytes: route.max_event_bytes.unwrap_or(crate::sse::DEFAULT_MAX_EVENT_BYTES),
            max_response_bytes: route.max_response_bytes.unwrap_or(DEFAULT_MAX_RESPONSE_BYTES),
            on_missing_capability: route.on_missing_capability,
            store_text: route.store_text,
            audit: route.audit,
            online,
        })
    }

    /// The bounds on reading one reply of this route's upstream.
    pub fn limits(&self) -> crate::http_upstream::Limits {
        crate::http_upstream::Limits {
            idle_timeout: self.idle_timeout,
            max_event_bytes: self.max_event_bytes,
            max_response_bytes: self.max_response_bytes,
        }
    }

    /// Where this route's probes go.
    pub fn probe_base(&self) -> Option<&str> {
        match (&self.probe.upstream, &self.upstream) {
            (Some(url), _) => Some(url.trim_end_matches('/')),
            (None, Upstream::Http(base)) => Some(base),
            (None, Upstream::Embedded) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use stopwise_core::rules::budget::Budget;
    use stopwise_core::rules::confidence::Confidence;

    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn empty_config_serves_the_embedded_default_model() {
        let settings = Config::default().resolve(&Overrides::default(), no_env).unwrap();
        assert_eq!(settings.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(settings.body_limit, DEFAULT_BODY_LIMIT);
        assert_eq!(settings.routes.len(), 1);
        let route = &settings.routes[0];
        assert_eq!((route.model.as_str(), &route.upstream), (DEFAULT_MODEL_NAME, &Upstream::Embedded));
        assert_eq!(route.policy, PolicySpec::parse(DEFAULT_POLICY).unwrap());
    }

    #[test]
    fn full_file_with_policy_table_and_text() {
        let config = Config::parse(
            r#"
listen = "0.0.0.0:9000"
body_limit = 1024
[[routes]]
model = "qwen"
upstream = "http://127.0.0.1:8000/v1/"
policy = { type = "budget", max_tokens = 64 }
task = "numeric"
probe = { interval = 16, mode = "chatml_completions", upstream = "http://127.0.0.1:8001/v1" }
[[routes]]
model = "small"
upstream = "embedded"
policy = "deer"
"#,
        )
        .unwrap();
        let settings = config.resolve(&Overrides::default(), no_env).unwrap();
        assert_eq!(settings.body_limit, 1024);
        let qwen = &settings.routes[0];
        assert_eq!(qwen.upstream, Upstream::Http("http://127.0.0.1:8000/v1".into()));
        assert_eq!(qwen.policy, Budget { max_tokens: 64 }.into());
        assert_eq!(qwen.probe_base(), Some("http://127.0.0.1:8001/v1"));
        assert_eq!(qwen.probe.mode, ProbeMode::ChatmlCompletions);
        assert_eq!(settings.routes[1].policy, Confidence { threshold: 0.95, min_tokens: 0 }.into());
    }

    #[test]
    fn the_example_config_is_valid() {
        let config = Config::parse(include_str!("../../../stopwise.example.toml")).unwrap();
        let settings = config.resolve(&Overrides::default(), no_env).unwrap();
        let models: Vec<&str> = settings.routes.iter().map(|r| r.model.as_str()).collect();
        assert_eq!(models, ["default", "qwen", "smol"]);
        assert_eq!(settings.routes[2].probe_base(), Some("http://127.0.0.1:8101/v1"));
    }

    #[test]
    fn flags_beat_environment_beats_file() {
        let config = Config::parse("listen = \"127.0.0.1:1\"").unwrap();
        let env = |var: &str| match var {
            "STOPWISE_LISTEN" => Some("127.0.0.1:2".to_owned()),
            "STOPWISE_UPSTREAM" => Some("http://h:1/v1".to_owned()),
            "STOPWISE_ADMIN_TOKEN" => Some("secret".to_owned()),
            _ => None,
        };
        let settings = config.clone().resolve(&Overrides::default(), env).unwrap();
        assert_eq!(settings.listen.port(), 2);
        assert_eq!(settings.admin_token.as_deref(), Some("secret"));
        assert_eq!(settings.routes[0].upstream, Upstream::Http("http://h:1/v1".into()));
        let flags = Overrides { listen: Some("127.0.0.1:3".into()), ..Overrides::default() };
        assert_eq!(config.resolve(&flags, env).unwrap().listen.port(), 3);
    }

    #[test]
    fn a_certificate_file_is_a_route_policy() {
        let dir = std::env::temp_dir().join(format!("stopwise-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let certificate = serde_json::json!({
            "kind": stopwise_core::certify::CERTIFICATE_KIND, "version": 1,
            "policy": {"type": "budget", "max_tokens": 64}, "label": "budget(64)", "epsilon": 0.2, "delta": 0.05,
            "risk": "disagreement", "method": "ltt", "p_value": "binomial", "items": 1100, "n": 1100,
            "empirical_risk": 0.16, "upper_bound": 0.19, "token_reduction": 0.34, "candidates": [],
        });
        std::fs::write(dir.join("cert.json"), certificate.to_string()).unwrap();
        let file = dir.join("stopwise.toml");
        std::fs::write(&file, "[[routes]]\nmodel = \"m\"\nupstream = \"embedded\"\npolicy_file = \"cert.json\"\n")
            .unwrap();
        // Relative to the config file's folder, wherever the server is started from.
        let settings = Config::load(&file).unwrap().resolve(&Overrides::default(), no_env).unwrap();
        assert_eq!(settings.routes[0].policy, Budget { max_tokens: 64 }.into());
        // The flag names a file as well.
        let cert = dir.join("cert.json").display().to_string();
        let flags = Overrides { policy: Some(cert), ..Overrides::default() };
        let settings = Config::default().resolve(&flags, no_env).unwrap();
        assert_eq!(settings.routes[0].policy, Budget { max_tokens: 64 }.into());
        std::fs::write(dir.join("cert.json"), "{\"kind\":\"stopwise-certificate\",\"version\":9}").unwrap();
        let err = Config::load(&file).unwrap().resolve(&Overrides::default(), no_env).unwrap_err().to_string();
        assert!(err.contains("routes[0].policy_file") && err.contains("cert.json"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_learned_model_file_resolves_against_the_config_file() {
        use stopwise_core::features::{FEATURES, FEATURE_NAMES, FEATURE_SCHEMA_VERSION};
        use stopwise_core::learned::{Dense, StopperModel, MODEL_FORMAT};

        let dir = std::env::temp_dir().join(format!("stopwise-config-learned-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("models")).unwrap();
        let model = StopperModel {
            format: MODEL_FORMAT.into(),
            schema_version: FEATURE_SCHEMA_VERSION,
            features: FEATURE_NAMES.iter().map(|n| n.to_string()).collect(),
            id: "cfg".into(),
            label: "agree".into(),
            input_mean: vec![0.0; FEATURES],
            input_scale: vec![1.0; FEATURES],
            layers: vec![Dense { inputs: FEATURES, outputs: 1, weights: vec![0.5; FEATURES], bias: vec![0.0] }],
            training: serde_json::Value::Null,
        };
        std::fs::write(dir.join("models/stopper.json"), model.to_json()).unwrap();
        std::fs::write(dir.join("models/policy.json"), r#"{"type":"learned","model":"stopper.json","threshold":0.7}"#)
            .unwrap();
        let file = dir.join("stopwise.toml");
        std::fs::write(
            &file,
            r#"
[[routes]]
model = "table"
upstream = "embedded"
policy = { type = "learned", model = "models/stopper.json", threshold = 0.7 }
[[routes]]
model = "text"
upstream = "embedded"
policy = '{"type":"learned","model":"models/stopper.json","threshold":0.7}'
[[routes]]
model = "file"
upstream = "embedded"
policy_file = "models/policy.json"
"#,
        )
        .unwrap();
        // Started from elsewhere: every path is relative to the file that names it.
        let settings = Config::load(&file).unwrap().resolve(&Overrides::default(), no_env).unwrap();
        for route in &settings.routes {
            assert_eq!(route.policy.label(), "learned(cfg,0.7)", "{}", route.model);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_api_key_comes_from_the_named_variable() {
        let config = Config::parse(
            "[[routes]]\nmodel = \"m\"\nupstream = \"https://api.example.com/v1\"\napi_key_env = \"KEY\"\npolicy = \"never\"",
        )
        .unwrap();
        let env = |var: &str| (var == "KEY").then(|| "sk-1".to_owned());
        let settings = config.clone().resolve(&Overrides::default(), env).unwrap();
        assert_eq!(settings.routes[0].api_key.as_deref(), Some("sk-1"));
        assert_eq!(settings.routes[0].upstream, Upstream::Http("https://api.example.com/v1".into()));
        let err = config.resolve(&Overrides::default(), no_env).unwrap_err().to_string();
        assert!(err.contains("routes[0].api_key_env") && err.contains("KEY"), "{err}");
    }

    #[test]
    fn errors_name_the_key() {
        let err = Config::parse("listn = \"x\"").unwrap_err();
        assert!(err.contains("listn"), "{err}");
        let config = Config::parse("[[routes]]\nmodel = \"m\"\nupstream = \"ftp://x\"").unwrap();
        let err = config.resolve(&Overrides::default(), no_env).unwrap_err().to_string();
        assert!(err.contains("routes[0].upstream"), "{err}");
        let config = Config::parse("[[routes]]\nmodel = \"m\"\nupstream = \"embedded\"\npolicy = \"nope\"").unwrap();
        let err = config.resolve(&Overrides::default(), no_env).unwrap_err().to_string();
        assert!(err.contains("routes[0].policy") && err.contains("dynasor-cot"), "{err}");
        let config =
            Config::parse("[[routes]]\nmodel = \"m\"\nupstream = \"embedded\"\nanswer_template = \"x\"").unwrap();
        let err = config.resolve(&Overrides::default(), no_env).unwrap_err().to_string();
        assert!(err.contains("answer_template"), "{err}");
    }

    #[test]
    fn values_that_cannot_work_are_refused_at_start() {
        let cases = [
            ("model = \"m\"\nupstream = \"http://\"", "routes[0].upstream"),
            ("model = \"m\"\nupstream = \"https://:8000/v1\"", "routes[0].upstream"),
            ("model = \"\"\nupstream = \"embedded\"", "routes[0].model"),
            ("model = \" \"\nupstream = \"embedded\"", "routes[0].model"),
            ("model = \"m\"\nupstream = \"http://h/v1\"\nupstream_model = \"\"", "routes[0].upstream_model"),
            ("model = \"m\"\nupstream = \"embedded\"\nprobe = { timeout_ms = 0 }", "routes[0].probe.timeout_ms"),
            ("model = \"m\"\nupstream = \"http://h/v1\"\nmax_event_bytes = 0", "routes[0].max_event_bytes"),
            ("model = \"m\"\nupstream = \"http://h/v1\"\nmax_response_bytes = 0", "routes[0].max_response_bytes"),
        ];
        for (route, key) in cases {
            let config = Config::parse(&format!("[[routes]]\n{route}\npolicy = \"never\"")).unwrap();
            let err = config.resolve(&Overrides::default(), no_env).unwrap_err().to_string();
            assert!(err.contains(key), "{route}: {err}");
        }
        let config = Config::parse("[[routes]]\nmodel = \"m\"\nupstream = \"http://h:8000/v1/\"").unwrap();
        let route = &config.resolve(&Overrides::default(), no_env).unwrap().routes[0];
        assert_eq!(route.upstream, Upstream::Http("http://h:8000/v1".into()));
        assert_eq!(route.limits().max_event_bytes, crate::sse::DEFAULT_MAX_EVENT_BYTES);
    }

    #[test]
    fn a_policy_file_that_is_a_device_or_a_fifo_is_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("cert.fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status().is_ok_and(|s| s.success());
        let mut paths = vec![PathBuf::from("/dev/zero")];
        if made {
            paths.push(fifo);
        }
        for path in paths {
            let file = dir.path().join("stopwise.toml");
            let toml = format!("[[routes]]\nmodel = \"m\"\nupstream = \"embedded\"\npolicy_file = {:?}\n", path);
            std::fs::write(&file, toml).unwrap();
            // Reading either would never end: /dev/zero fills memory, a FIFO blocks start-up.
            let err = Config::load(&file).unwrap().resolve(&Overrides::default(), no_env).unwrap_err().to_string();
            assert!(err.contains("routes[0].policy_file") && err.contains(&path.display().to_string()), "{err}");
        }
    }
}
