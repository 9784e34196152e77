//! The dashboard: `GET /dashboard` (and `GET /`, redirected to it), one section per route with
//! the live estimate of every setting of its ladder, the active one, tokens saved, the window's
//! settings on a tokens-saved vs risk chart, the active setting's estimate over time, recent
//! fallbacks and proposals, audits and feedback.
//!
//! The page is rendered here, with the figures of the moment; a hand-written script
//! (`crates/serve/dashboard/dashboard.js`, served by stopwise itself: no build step, nothing from
//! elsewhere) draws the charts as SVG and refreshes every figure from `GET /dashboard/data` every
//! few seconds. That JSON holds what `/metrics` and `/admin/online` show (the estimator's report,
//! the audit, request and feedback counters), never a prompt or a completion; like `/metrics` it
//! needs no token.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use serde_json::{json, Map, Value};
use stopwise_core::online::Estimator;

use crate::app::AppState;

const SCRIPT: &str = include_str!("../dashboard/dashboard.js");
const STYLE: &str = include_str!("../dashboard/dashboard.css");

/// How often the page asks for fresh figures.
const REFRESH_MS: u64 = 5000;

/// Points kept per route for the time series.
pub const HISTORY_KEPT: usize = 500;

/// One published estimate of a route's active setting.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Point {
    pub at_ms: u64,
    /// The active setting's place on the ladder.
    pub active: usize,
    pub audits: usize,
    pub risk: f64,
    pub bound: f64,
    pub token_reduction: f64,
}

/// The last [`HISTORY_KEPT`] estimates of a route's active setting, as they were published.
#[derive(Debug, Default)]
pub struct History {
    points: Mutex<VecDeque<Point>>,
}

impl History {
    /// Keeps the estimator's figures for its active setting now.
    pub fn record(&self, estimator: &Estimator) {
        let active = estimator.active();
        let Some(estimate) = estimator.estimates().into_iter().nth(active) else { return };
        let point = Point {
            at_ms: crate::session::now_ms(),
            active,
            audits: estimator.audits(),
            risk: estimate.risk,
            bound: estimate.bound,
            token_reduction: estimate.token_reduction,
        };
        let mut points = self.points.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        points.push_back(point);
        while points.len() > HISTORY_KEPT {
            points.pop_front();
        }
    }

    pub fn points(&self) -> Vec<Point> {
        self.points.lock().unwrap_or_else(std::sync::PoisonError::into_inner).iter().cloned().collect()
    }
}

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/", get(|| async { Redirect::temporary("/dashboard") }))
        .route("/dashboard", get(page))
        .route("/dashboard/data", get(data))
        .route("/dashboard/dashboard.js", get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }))
        .route("/dashboard/dashboard.css", get(|| async { asset("text/css; charset=utf-8", STYLE) }))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

/// The page runs only its own script and style, and loads nothing from elsewhere.
const CONTENT_SECURITY_POLICY: &str =
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

async fn page(State(state): State<Arc<AppState>>) -> Response {
    let html = render(&snapshot(&state));
    (
        [
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::CACHE_CONTROL, "no-store"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        Html(html),
    )
        .into_response()
}

async fn data(State(state): State<Arc<AppState>>) -> Response {
    ([(header::CACHE_CONTROL, "no-store")], Json(snapshot(&state))).into_response()
}

/// Everything the page shows: per route the estimator's report (as `/admin/online` has it), the
/// active setting's history, and the counters of `/metrics` that concern it.
pub fn snapshot(state: &AppState) -> Value {
    let text = crate::metrics::handle().map(|handle| handle.render()).unwrap_or_default();
    let samples = samples(&text);
    let count = |name: &str, wanted: &[(&str, &str)]| -> u64 {
        let sum: f64 = samples
            .iter()
            .filter(|s| s.name == name && wanted.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
            .map(|s| s.value)
            .sum();
        sum as u64
    };
    let mut routes = Map::new();
    for (model, live) in state.live() {
        let report = live.report();
        let online = if report.get("estimates").is_some() { report } else { Value::Null };
        let by = |name: &str, label: &str, values: &[&str]| -> Value {
            values.iter().map(|v| ((*v).to_owned(), json!(count(name, &[("model", model), (label, v)])))).collect()
        };
        routes.insert(
            model.clone(),
            json!({
                "online": online,
                "history": live.history(),
                "audits": by("stopwise_audits_total", "result", &["run", "dropped", "failed"]),
                "requests": by("stopwise_requests_total", "outcome", &["stopped", "completed", "failed", "cancelled"]),
            }),
        );
    }
    let feedback: Map<String, Value> = ["received", "stored", "unknown_id"]
        .iter()
        .map(|r| ((*r).to_owned(), json!(count("stopwise_feedback_total", &[("result", r)]))))
        .collect();
    json!({"at_ms": crate::session::now_ms(), "refresh_ms": REFRESH_MS, "feedback": feedback, "routes": routes})
}

/// One line of the Prometheus text format.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// The samples of a Prometheus text exposition (comments and malformed lines skipped).
pub fn samples(text: &str) -> Vec<Sample> {
    text.lines().filter(|l| !l.starts_with('#')).filter_map(sample).collect()
}

fn sample(line: &str) -> Option<Sample> {
    let line = line.trim();
    let (series, value) = line.rsplit_once(' ')?;
    let value = value.parse().ok()?;
    let Some((name, rest)) = series.split_once('{') else {
        return Some(Sample { name: series.to_owned(), labels: BTreeMap::new(), value });
    };
    let mut labels = BTreeMap::new();
    let mut rest = rest.strip_suffix('}')?;
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                (_, c) => value.push(c),
            }
        };
        labels.insert(key.trim_start_matches(',').to_owned(), value);
        rest = after[end + 1..].trim_start_matches(',');
    }
    Some(Sample { name: name.to_owned(), labels, value })
}

/// The figures shown for a route, by field name: the text shown and the exact value (the page's
/// script computes the same from `/dashboard/data`).
fn fields(route: &Value) -> BTreeMap<&'static str, (String, String)> {
    let mut out = BTreeMap::new();
    let mut put = |name: &'static str, text: String, value: String| {
        out.insert(name, (text, value));
    };
    for (group, counts) in [("audits", &route["audits"]), ("requests", &route["requests"])] {
        let mut total = 0;
        for (key, n) in counts.as_object().into_iter().flatten() {
            let n = n.as_u64().unwrap_or(0);
            total += n;
            let name: &'static str = match (group, key.as_str()) {
                ("audits", "run") => "audits_run",
                ("audits", "dropped") => "audits_dropped",
                ("audits", "failed") => "audits_failed",
                ("requests", "stopped") => "requests_stopped",
                ("requests", "completed") => "requests_completed",
                ("requests", "failed") => "requests_failed",
                ("requests", "cancelled") => "requests_cancelled",
                _ => continue,
            };
            put(name, n.to_string(), n.to_string());
        }
        if group == "requests" {
            put("requests", total.to_string(), total.to_string());
        }
    }
    let online = &route["online"];
    if online.is_null() {
        return out;
    }
    let active = online["active"].as_u64().unwrap_or(0);
    let estimates = online["estimates"].as_array().map(Vec::as_slice).unwrap_or_default();
    let current = estimates.get(active as usize).unwrap_or(&Value::Null);
    let text = |v: &Value| v.as_str().unwrap_or("").to_owned();
    put("active_label", text(&online["active_label"]), text(&online["active_label"]));
    put("active", active.to_string(), active.to_string());
    put("active_version", text(&current["version"]), text(&current["version"]));
    put("ladder", estimates.len().to_string(), estimates.len().to_string());
    for name in ["generation", "audits_in_window", "min_audits", "window"] {
        let n = online[name].as_u64().unwrap_or(0);
        put(name, n.to_string(), n.to_string());
    }
    for (name, v) in [
        ("risk", &current["risk"]),
        ("bound", &current["bound"]),
        ("token_reduction", &current["token_reduction"]),
        ("epsilon", &online["epsilon"]),
        ("delta", &online["delta"]),
    ] {
        put(name, percent(v), number(v));
    }
    let measured = current["n"].as_u64().unwrap_or(0);
    let needed = online["min_audits"].as_u64().unwrap_or(0);
    let state = if measured < needed {
        format!("collecting: {measured} of {needed} audits")
    } else if current["certified"] == json!(true) {
        "certified".to_owned()
    } else {
        "not certified".to_owned()
    };
    put("state", state.clone(), state);
    let proposal = match online["proposal"].as_object() {
        None => "none".to_owned(),
        Some(p) => {
            let to = p.get("to").and_then(Value::as_u64).unwrap_or(0) as usize;
            let label = estimates.get(to).map_or(String::new(), |e| text(&e["label"]));
            format!("{label} (bound {} over {} audits)", percent(&p["bound"]), p["n"])
        }
    };
    put("proposal", proposal.clone(), proposal);
    out
}

/// A fraction as a percentage to one decimal place, as the page's script shows it.
fn percent(v: &Value) -> String {
    match v.as_f64() {
        Some(x) if x.is_finite() => format!("{:.1} %", 100.0 * x),
        _ => "–".to_owned(),
    }
}

fn number(v: &Value) -> String {
    v.as_f64().filter(|x| x.is_finite()).map_or(String::new(), |x| x.to_string())
}

fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `<tag data-field=… data-value=…>text</tag>` for a route's field.
fn field(fields: &BTreeMap<&'static str, (String, String)>, name: &str, tag: &str) -> String {
    let (text, value) = fields.get(name).cloned().unwrap_or_default();
    format!(r#"<{tag} data-field="{name}" data-value="{}">{}</{tag}>"#, esc(&value), esc(&text))
}

/// `HH:MM:SS` (UTC) of a time in milliseconds since the epoch.
fn clock(ms: u64) -> String {
    let s = (ms / 1000) % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
}

/// The page, with the figures of `snapshot`.
pub fn render(snapshot: &Value) -> String {
    let mut html = String::new();
    let feedback = |r: &str| snapshot["feedback"][r].as_u64().unwrap_or(0);
    let _ = write!(
        html,
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>stopwise dashboard</title>
<link rel="stylesheet" href="/dashboard/dashboard.css">
<script src="/dashboard/dashboard.js" defer></script>
</head>
<body data-refresh-ms="{refresh}">
<header>
<h1>stopwise <span>live estimate</span></h1>
<p class="global">feedback: <b data-field="feedback_received" data-value="{received}">{received}</b> received ·
<b data-field="feedback_stored" data-value="{stored}">{stored}</b> stored ·
<b data-field="feedback_unknown_id" data-value="{unknown}">{unknown}</b> unknown id</p>
<p class="updated">figures of <time data-field="updated" data-value="{at}">{clock} UTC</time> · <span data-field="status" class="status">server-rendered</span></p>
</header>
<main>
"#,
        refresh = REFRESH_MS,
        received = feedback("received"),
        stored = feedback("stored"),
        unknown = feedback("unknown_id"),
        at = snapshot["at_ms"].as_u64().unwrap_or(0),
        clock = clock(snapshot["at_ms"].as_u64().unwrap_or(0)),
    );
    let routes = snapshot["routes"].as_object().cloned().unwrap_or_default();
    if routes.is_empty() {
        html.push_str("<p class=\"note\">No routes.</p>\n");
    }
    for (model, route) in &routes {
        route_section(&mut html, model, route);
    }
    html.push_str("</main>\n</body>\n</html>\n");
    html
}

fn route_section(html: &mut String, model: &str, route: &Value) {
    let f = fields(route);
    let online = &route["online"];
    let _ = writeln!(html, r#"<section class="route" data-route="{}">"#, esc(model));
    if online.is_null() {
        let _ = write!(
            html,
            r#"<h2>{model}</h2>
<p class="note">No <code>[routes.online]</code> ladder on this route: it serves its configured policy, with no live estimate.</p>
<div class="cards">
<div class="card"><h3>Requests</h3>{requests}<p>stopped {stopped} · completed {completed}</p></div>
<div class="card"><h3>Audits run</h3>{run}<p>dropped {dropped} · failed {failed}</p></div>
</div>
</section>
"#,
            model = esc(model),
            requests = field(&f, "requests", "strong"),
            stopped = field(&f, "requests_stopped", "span"),
            completed = field(&f, "requests_completed", "span"),
            run = field(&f, "audits_run", "strong"),
            dropped = field(&f, "audits_dropped", "span"),
            failed = field(&f, "audits_failed", "span"),
        );
        return;
    }
    let _ = write!(
        html,
        r#"<h2>{model} {state}</h2>
<div class="cards">
<div class="card"><h3>Active setting</h3>{label}<p>ladder position {active} (0–{last}) · version {version} · switched {generation}×</p></div>
<div class="card"><h3>Live risk (active)</h3>{risk}<p>bound {bound} vs ε {epsilon} · δ {delta}</p></div>
<div class="card"><h3>Tokens saved</h3>{saved}<p>by the active setting: of the full runs' tokens, probes counted, over the window</p></div>
<div class="card"><h3>Audits in window</h3>{audits}<p>window {window} · {min} needed to certify</p></div>
<div class="card"><h3>Audits run</h3>{run}<p>dropped {dropped} · failed {failed} · requests {requests} ({stopped} stopped)</p></div>
<div class="card"><h3>Proposal</h3>{proposal}<p>approve or reject: <code>POST /admin/online/{model}</code></p></div>
</div>
<div class="charts">
<figure><figcaption>This window's settings: tokens saved vs risk (● measured risk, ─ its bound, ◯ active; line: Pareto frontier)</figcaption>
<svg class="chart" data-chart="pareto" data-points="0" viewBox="0 0 600 300" role="img" aria-label="tokens saved vs risk"></svg></figure>
<figure><figcaption>Active setting over time: risk, bound and tokens saved as published; ε dashed</figcaption>
<svg class="chart" data-chart="history" data-points="0" viewBox="0 0 600 300" role="img" aria-label="risk over time"></svg></figure>
</div>
<div class="lower">
<table class="ladder">
<thead><tr><th>#</th><th>setting</th><th>version</th><th>audits</th><th>losses</th><th>risk</th><th>bound</th><th>bound vs ε</th><th>tokens saved</th><th>certified</th></tr></thead>
<tbody>
"#,
        model = esc(model),
        state = field(&f, "state", "span").replacen("<span", "<span class=\"badge\"", 1),
        label = field(&f, "active_label", "strong"),
        active = field(&f, "active", "span"),
        last = f.get("ladder").map_or(0, |(t, _)| t.parse::<usize>().unwrap_or(1).saturating_sub(1)),
        version = field(&f, "active_version", "code"),
        generation = field(&f, "generation", "span"),
        risk = field(&f, "risk", "strong"),
        bound = field(&f, "bound", "span"),
        epsilon = field(&f, "epsilon", "span"),
        delta = field(&f, "delta", "span"),
        saved = field(&f, "token_reduction", "strong"),
        audits = field(&f, "audits_in_window", "strong"),
        window = field(&f, "window", "span"),
        min = field(&f, "min_audits", "span"),
        run = field(&f, "audits_run", "strong"),
        dropped = field(&f, "audits_dropped", "span"),
        failed = field(&f, "audits_failed", "span"),
        requests = field(&f, "requests", "span"),
        stopped = field(&f, "requests_stopped", "span"),
        proposal = field(&f, "proposal", "strong"),
    );
    let active = online["active"].as_u64().unwrap_or(0);
    for (i, e) in online["estimates"].as_array().into_iter().flatten().enumerate() {
        let class = if i as u64 == active { r#" class="active""# } else { "" };
        let cell = |col: &str, text: String, value: String| {
            format!(r#"<td data-col="{col}" data-value="{}">{}</td>"#, esc(&value), esc(&text))
        };
        let text = |v: &Value| v.as_str().unwrap_or("").to_owned();
        let count = |v: &Value| v.as_u64().unwrap_or(0).to_string();
        let certified = if e["certified"] == json!(true) { "yes" } else { "no" };
        let _ = writeln!(
            html,
            r#"<tr data-setting="{i}"{class}><td>{i}</td>{}{}{}{}{}{}<td data-col="bar"></td>{}{}</tr>"#,
            cell("label", text(&e["label"]), text(&e["label"])),
            cell("version", text(&e["version"]), text(&e["version"])),
            cell("n", count(&e["n"]), count(&e["n"])),
            cell("losses", count(&e["losses"]), count(&e["losses"])),
            cell("risk", percent(&e["risk"]), number(&e["risk"])),
            cell("bound", percent(&e["bound"]), number(&e["bound"])),
            cell("token_reduction", percent(&e["token_reduction"]), number(&e["token_reduction"])),
            cell("certified", certified.to_owned(), certified.to_owned()),
        );
    }
    let changes = online["changes"].as_array().map(Vec::as_slice).unwrap_or_default();
    let _ = write!(
        html,
        r#"</tbody>
</table>
<div class="changes"><h3>Fallbacks, promotions and proposals (newest first)</h3>
<ol data-field="changes" data-count="{}">
"#,
        changes.len()
    );
    for change in changes.iter().rev() {
        html.push_str(&change_item(change));
    }
    if changes.is_empty() {
        html.push_str("<li class=\"none\">none yet</li>\n");
    }
    html.push_str("</ol></div>\n</div>\n</section>\n");
}

/// One change, as the page's script writes it too.
fn change_item(change: &Value) -> String {
    let text = |v: &Value| v.as_str().unwrap_or("").to_owned();
    let evidence = &change["evidence"];
    let bound = match evidence["bound"].as_f64() {
        Some(b) if b.is_finite() => format!("; bound {} over {} audits", percent(&evidence["bound"]), evidence["n"]),
        _ => String::new(),
    };
    format!(
        "<li data-kind=\"{kind}\"><time>{at} UTC</time> <b>{kind}</b> {from} → {to} <span class=\"why\">({why}{bound})</span></li>\n",
        kind = esc(&text(&change["kind"])),
        at = clock(change["at_ms"].as_u64().unwrap_or(0)),
        from = esc(&text(&change["from"])),
        to = esc(&text(&change["to"])),
        why = esc(&text(&change["why"])),
        bound = esc(&bound),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_lines_parse_with_escaped_labels() {
        let text = "# HELP x y\nstopwise_audits_total{model=\"a \\\"b\\\"\",result=\"run\"} 3\nup 1\nbad line here\n";
        let got = samples(text);
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0].name, "stopwise_audits_total");
        assert_eq!(got[0].labels["model"], "a \"b\"");
        assert_eq!(got[0].labels["result"], "run");
        assert_eq!(got[0].value, 3.0);
        assert_eq!((got[1].name.as_str(), got[1].value), ("up", 1.0));
    }

    #[test]
    fn the_page_is_rendered_with_the_figures_before_any_script_runs() {
        let estimate = |label: &str, risk: f64, bound: f64, saved: f64, certified: bool| {
            json!({"label": label, "version": format!("v-{label}"), "n": 10, "losses": (risk * 10.0) as u64,
                "risk": risk, "bound": bound, "certified": certified, "token_reduction": saved})
        };
        let snapshot = json!({
            "at_ms": 3_723_000, "refresh_ms": 5000,
            "feedback": {"received": 2, "stored": 1, "unknown_id": 1},
            "routes": {
                "r<1>": {
                    "online": {
                        "active": 1, "active_label": "never", "generation": 1, "epsilon": 0.2, "delta": 0.1,
                        "risk": "disagreement", "window": 50, "audits_in_window": 10, "min_audits": 8,
                        "estimates": [estimate("budget(16)", 0.9, 0.978, 0.48, false), estimate("never", 0.0, 0.149, 0.0, true)],
                        "proposal": null,
                        "changes": [{"at_ms": 3_600_000, "kind": "fallback", "why": "the audit window's bound",
                            "from": "budget(16)", "to": "never", "evidence": {"kind": "fallback", "bound": 0.972, "n": 8}}],
                    },
                    "history": [], "audits": {"run": 10, "dropped": 0, "failed": 0},
                    "requests": {"stopped": 8, "completed": 2, "failed": 0, "cancelled": 0},
                },
                "plain": {"online": null, "history": [], "audits": {"run": 0, "dropped": 0, "failed": 0},
                    "requests": {"stopped": 0, "completed": 3, "failed": 0, "cancelled": 0}},
            },
        });
        let html = render(&snapshot);
        for wanted in [
            r#"<section class="route" data-route="r&lt;1&gt;">"#,
            r#"<strong data-field="active_label" data-value="never">never</strong>"#,
            r#"<strong data-field="risk" data-value="0">0.0 %</strong>"#,
            r#"<span data-field="bound" data-value="0.149">14.9 %</span>"#,
            r#"<span data-field="epsilon" data-value="0.2">20.0 %</span>"#,
            r#"<strong data-field="audits_in_window" data-value="10">10</strong>"#,
            r#"<strong data-field="audits_run" data-value="10">10</strong>"#,
            r#"<span data-field="requests" data-value="10">10</span>"#,
            r#"<b data-field="feedback_received" data-value="2">2</b>"#,
            r#"<span class="badge" data-field="state" data-value="certified">certified</span>"#,
            r#"<tr data-setting="1" class="active">"#,
            r#"<td data-col="bound" data-value="0.978">97.8 %</td>"#,
            r#"<ol data-field="changes" data-count="1">"#,
            "<b>fallback</b> budget(16) → never <span class=\"why\">(the audit window&#39;s bound; bound 97.2 % over 8 audits)",
            r#"<section class="route" data-route="plain">"#,
            r#"<strong data-field="requests" data-value="3">3</strong>"#,
            "<time data-field=\"updated\" data-value=\"3723000\">01:02:03 UTC</time>",
        ] {
            assert!(html.contains(wanted), "no {wanted} in\n{html}");
        }
        assert_eq!(html.matches("data-chart=").count(), 2, "charts only where there is an estimate");
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(esc("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
        assert_eq!(clock(3_723_000), "01:02:03");
    }
}
