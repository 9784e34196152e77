//! The dashboard in a real browser: `stopwise serve` on the embedded default model with every
//! request audited and a live estimate, ten requests and one feedback, then `GET /dashboard` in
//! headless Chromium. The DOM the page's script leaves (after it fetched `/dashboard/data`) has
//! charts with data, and shows the figures `/metrics` reports at the same time. A screenshot is
//! taken too (copied to `$STOPWISE_DASHBOARD_SCREENSHOT` when set).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use stopwise_engine::Engine;
use stopwise_serve::dashboard::{samples, Sample};

const QUESTIONS: &str = include_str!("../../../data/eval/gsm8k_test_500.jsonl");
const ROUTE: &str = "gsm8k";
const REQUESTS: usize = 10;

fn questions() -> Vec<String> {
    QUESTIONS
        .lines()
        .take(REQUESTS)
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["question"].as_str().unwrap().to_owned())
        .collect()
}

/// Every request audited; a ladder of two budgets and no stopping, the 32-token budget active;
/// no admin token (so `/admin/online` answers without one).
fn config(url: &str) -> String {
    format!(
        r#"
[store]
url = "{url}"

[[routes]]
model = "{ROUTE}"
upstream = "embedded"
task = "numeric"
policy = {{ type = "budget", max_tokens = 32 }}
probe = {{ interval = 16 }}
audit = {{ fraction = 1.0, max_concurrent = 1 }}
online = {{ epsilon = 0.2, delta = 0.2, risk = "disagreement", window = 50, promote = "propose", ladder = [{{ type = "budget", max_tokens = 16 }}, {{ type = "budget", max_tokens = 32 }}] }}
"#
    )
}

/// The Chromium binary: `$STOPWISE_CHROMIUM`, else `chromium` on the `PATH`.
fn chromium_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("STOPWISE_CHROMIUM") {
        return PathBuf::from(path);
    }
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).map(|dir| dir.join("chromium")).find(|p| p.is_file()))
        .unwrap_or_default();
    found.unwrap_or_else(|| {
        panic!(
            "this test drives a real headless Chromium and found no `chromium` on the PATH: install it \
             with `scripts/install-deps --test` (Debian package `chromium`), or point STOPWISE_CHROMIUM at one"
        )
    })
}

/// Runs headless Chromium on `url` with `extra` arguments and a fresh profile; its stdout.
fn chromium(url: &str, extra: &[&str], dir: &Path) -> String {
    let profile = tempfile::tempdir_in(dir).unwrap();
    let (out, err) = (dir.join("chromium.out"), dir.join("chromium.err"));
    let mut child = Command::new(chromium_binary())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--window-size=1280,900",
            "--virtual-time-budget=10000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run chromium ({e}): install it with `scripts/install-deps --test`"));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(180);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium ran for 3 minutes on {url}:\n{}", std::fs::read_to_string(&err).unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!("chromium {extra:?}: {status} after {:.1} s", started.elapsed().as_secs_f64());
    assert!(status.success(), "chromium failed ({status}):\n{}", std::fs::read_to_string(&err).unwrap_or_default());
    std::fs::read_to_string(&out).unwrap()
}

async fn get_json(url: &str) -> Value {
    let response = reqwest::get(url).await.unwrap();
    assert_eq!(response.status(), 200, "{url}");
    response.json().await.unwrap()
}

async fn metrics(base: &str) -> Vec<Sample> {
    samples(&reqwest::get(format!("{base}/metrics")).await.unwrap().text().await.unwrap())
}

/// The value of the series `name` with these labels (among others).
fn metric(all: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<&Sample> = all
        .iter()
        .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
        .collect();
    assert_eq!(found.len(), 1, "{name}{labels:?}: {found:?}");
    found[0].value
}

fn unescape(text: &str) -> String {
    text.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", "\"").replace("&#39;", "'").replace("&amp;", "&")
}

/// The element whose opening tag holds `needle` in `html`: its opening tag and its text (up to
/// the next tag).
fn element<'a>(html: &'a str, needle: &str) -> (&'a str, String) {
    let at = html.find(needle).unwrap_or_else(|| panic!("no `{needle}` in\n{html}"));
    let start = html[..at].rfind('<').unwrap();
    let end = at + html[at..].find('>').unwrap();
    let rest = &html[end + 1..];
    (&html[start..=end], unescape(&rest[..rest.find('<').unwrap_or(rest.len())]))
}

fn attr(tag: &str, name: &str) -> String {
    let key = format!(" {name}=\"");
    let at = tag.find(&key).unwrap_or_else(|| panic!("no {name} in {tag}")) + key.len();
    unescape(&tag[at..at + tag[at..].find('"').unwrap()])
}

/// The `data-value` and the text of the element of `data-field="name"`.
fn field(html: &str, name: &str) -> (String, String) {
    let (tag, text) = element(html, &format!("data-field=\"{name}\""));
    (attr(tag, "data-value"), text)
}

/// The part of `html` from the tag holding `needle` to the closing `close` after it.
fn part<'a>(html: &'a str, needle: &str, close: &str) -> &'a str {
    let at = html.find(needle).unwrap_or_else(|| panic!("no `{needle}` in\n{html}"));
    let start = if needle.starts_with('<') { at } else { html[..at].rfind('<').unwrap() };
    let end = at + html[at..].find(close).unwrap_or_else(|| panic!("no {close} after {needle}"));
    &html[start..end + close.len()]
}

/// A shown fraction (`"12.5 %"`, one decimal place) matches `value`: within half the last place.
fn shown_percent(text: &str, value: f64, what: &str) {
    let shown: f64 = text.trim_end_matches('%').trim().parse().unwrap_or_else(|_| panic!("{what}: `{text}`"));
    assert!((shown - 100.0 * value).abs() <= 0.05 + 1e-9, "{what}: shown `{text}`, /metrics {value}");
}

/// An exact value (`data-value`, as the script wrote it) matches `/metrics`.
fn same_number(data_value: &str, value: f64, what: &str) {
    let got: f64 = data_value.parse().unwrap_or_else(|_| panic!("{what}: data-value `{data_value}`"));
    assert!((got - value).abs() <= 1e-12 * value.abs().max(1.0), "{what}: page {got}, /metrics {value}");
}

#[tokio::test]
async fn the_dashboard_shows_in_a_real_browser_what_metrics_report() {
    let binary = chromium_binary();
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("stopwise.db").display());
    let base = start(&config(&url), Some(engine() as Arc<dyn Engine>));

    // The page, its script and style, and `/` sent to it.
    let no_redirects = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let root = no_redirects.get(format!("{base}/")).send().await.unwrap();
    assert_eq!((root.status().as_u16(), root.headers()["location"].to_str().unwrap()), (307, "/dashboard"));
    let page = reqwest::get(format!("{base}/dashboard")).await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    assert!(page.headers()["content-security-policy"].to_str().unwrap().contains("script-src 'self'"));
    for (path, kind) in [("dashboard.js", "text/javascript"), ("dashboard.css", "text/css")] {
        let asset = reqwest::get(format!("{base}/dashboard/{path}")).await.unwrap();
        assert_eq!(asset.status(), 200);
        assert!(asset.headers()["content-type"].to_str().unwrap().starts_with(kind), "{path}");
    }

    // Traffic: ten requests, each audited before the next is sent (one audit runs at a time; one
    // due while another runs would be dropped); then one feedback.
    let questions = questions();
    let mut ids = Vec::new();
    for (i, question) in questions.iter().enumerate() {
        let response: Value = post(&base, &chat(ROUTE, question, 48, false, Value::Null)).await.json().await.unwrap();
        ids.push(response["id"].as_str().unwrap().to_owned());
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let online = get_json(&format!("{base}/admin/online")).await;
            let data = get_json(&format!("{base}/dashboard/data")).await;
            let in_window = online["routes"][ROUTE]["audits_in_window"].as_u64().unwrap();
            let audits = &data["routes"][ROUTE]["audits"];
            assert_eq!((&audits["dropped"], &audits["failed"]), (&json!(0), &json!(0)), "{data}");
            if in_window > i as u64 && audits["run"] == json!(i + 1) {
                break;
            }
            assert!(Instant::now() < deadline, "audit {} never came in: {online}", i + 1);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    eprintln!("{REQUESTS} requests served and audited in {:.1} s", t0.elapsed().as_secs_f64());
    let feedback = reqwest::Client::new()
        .post(format!("{base}/v1/feedback"))
        .json(&json!({"id": ids[0], "correct": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(feedback.status(), 200);

    // The data endpoint: the estimator's report and the history, never a prompt.
    let data_text = reqwest::get(format!("{base}/dashboard/data")).await.unwrap().text().await.unwrap();
    let data: Value = serde_json::from_str(&data_text).unwrap();
    let route = &data["routes"][ROUTE];
    assert_eq!(route["online"]["audits_in_window"], json!(REQUESTS), "{data}");
    let history = route["history"].as_array().unwrap();
    assert!(history.len() > REQUESTS && history.len() <= 500, "one point per publication: {}", history.len());
    for question in &questions {
        assert!(!data_text.contains(&question[..40]), "prompt text in /dashboard/data");
    }

    // The page in the browser, with the figures of /metrics, which stand still meanwhile.
    let before = metrics(&base).await;
    let dom = tokio::task::spawn_blocking({
        let (page, dir) = (format!("{base}/dashboard"), dir.path().to_owned());
        move || chromium(&page, &["--dump-dom"], &dir)
    })
    .await
    .unwrap();
    let after = metrics(&base).await;
    eprintln!("chromium: {}\nDOM: {} bytes", binary.display(), dom.len());
    let keep = std::env::var_os("STOPWISE_DASHBOARD_SCREENSHOT").map(PathBuf::from);
    if let Some(keep) = &keep {
        // Beside the screenshot: the page as the browser left it, and the data it had.
        std::fs::write(keep.with_extension("html"), &dom).unwrap();
        std::fs::write(keep.with_extension("json"), &data_text).unwrap();
    }

    assert!(dom.contains("<title>stopwise dashboard</title>"), "{dom}");
    let (_, status) = element(&dom, "data-field=\"status\"");
    assert!(status.starts_with("live"), "the script did not refresh the page: status `{status}`");
    for question in &questions {
        assert!(!dom.contains(&question[..40]), "prompt text on the page");
    }
    let section = part(&dom, &format!("data-route=\"{ROUTE}\""), "</section>");

    let labels = [("model", ROUTE)];
    let same = |name: &str, labels: &[(&str, &str)]| {
        let value = metric(&after, name, labels);
        assert_eq!(metric(&before, name, labels), value, "{name} moved while the page loaded");
        value
    };
    let active = same("stopwise_online_active_setting", &labels);
    let (value, text) = field(section, "active");
    assert_eq!((value.as_str(), text.as_str()), (active.to_string().as_str(), active.to_string().as_str()));
    let setting = active.to_string();
    let setting_labels = [("model", ROUTE), ("setting", setting.as_str())];
    let active_policy = after
        .iter()
        .find(|s| s.name == "stopwise_online_risk" && s.labels["model"] == ROUTE && s.labels["setting"] == setting)
        .unwrap()
        .labels["policy"]
        .clone();
    assert_eq!(field(section, "active_label").1, active_policy);
    for (name, shown) in [
        ("stopwise_online_risk", "risk"),
        ("stopwise_online_risk_bound", "bound"),
        ("stopwise_online_token_reduction", "token_reduction"),
    ] {
        let value = same(name, &setting_labels);
        let (data_value, text) = field(section, shown);
        same_number(&data_value, value, shown);
        shown_percent(&text, value, shown);
    }
    let epsilon = same("stopwise_online_epsilon", &labels);
    let (data_value, text) = field(section, "epsilon");
    same_number(&data_value, epsilon, "epsilon");
    shown_percent(&text, epsilon, "epsilon");
    for (name, shown, labels) in [
        ("stopwise_online_audits_in_window", "audits_in_window", &labels[..]),
        ("stopwise_audits_total", "audits_run", &[("model", ROUTE), ("result", "run")][..]),
        ("stopwise_feedback_total", "feedback_stored", &[("result", "stored")][..]),
        ("stopwise_feedback_total", "feedback_received", &[("result", "received")][..]),
    ] {
        let value = same(name, labels);
        let scope = if shown.starts_with("feedback") { dom.as_str() } else { section };
        let (data_value, text) = field(scope, shown);
        assert_eq!((data_value.clone(), text), (value.to_string(), value.to_string()), "{shown}");
    }
    assert_eq!(field(&dom, "feedback_stored").0, "1");
    assert_eq!(field(section, "audits_in_window").0, REQUESTS.to_string());

    // Every setting of the ladder in the table, as /metrics has it; the active row marked.
    let ladder = route["online"]["estimates"].as_array().unwrap().len();
    assert_eq!(ladder, 3, "two budgets and no stopping");
    for i in 0..ladder {
        let row = part(section, &format!("<tr data-setting=\"{i}\""), "</tr>");
        let (tag, _) = element(row, "data-setting");
        assert_eq!(tag.contains("class=\"active\""), i as f64 == active, "{row}");
        let i = i.to_string();
        let labels = [("model", ROUTE), ("setting", i.as_str())];
        for (name, col) in [("stopwise_online_risk", "risk"), ("stopwise_online_risk_bound", "bound")] {
            let value = same(name, &labels);
            let (tag, text) = element(row, &format!("data-col=\"{col}\""));
            same_number(&attr(tag, "data-value"), value, &format!("setting {i} {col}"));
            shown_percent(&text, value, &format!("setting {i} {col}"));
        }
        assert!(row.contains("<svg class=\"bar\""), "the bound-vs-ε bar of setting {i}: {row}");
    }

    // The charts have data: every setting on the frontier chart (the active one ringed), and a
    // point per published estimate on the time series.
    let pareto = part(section, "data-chart=\"pareto\"", "</svg>");
    let (tag, _) = element(pareto, "data-chart");
    assert_eq!(attr(tag, "data-points"), ladder.to_string(), "{pareto}");
    assert_eq!(pareto.matches("<circle class=\"point").count(), ladder, "{pareto}");
    assert_eq!(pareto.matches("class=\"active-ring\"").count(), 1, "{pareto}");
    assert!(pareto.contains("(active)"), "{pareto}");
    let series = part(section, "data-chart=\"history\"", "</svg>");
    let (tag, _) = element(series, "data-chart");
    let points: usize = attr(tag, "data-points").parse().unwrap();
    assert_eq!(points, history.len(), "{series}");
    assert!(points > REQUESTS, "{series}");
    assert_eq!(series.matches("<circle class=\"point risk\"").count(), points);
    assert!(series.matches("<path class=\"line ").count() >= 3, "risk, bound and tokens saved: {series}");

    // Recent changes: as many as /metrics counted.
    let changes: f64 = after
        .iter()
        .filter(|s| {
            s.name == "stopwise_policy_changes_total" && s.labels.get("model").map(String::as_str) == Some(ROUTE)
        })
        .map(|s| s.value)
        .sum();
    let (tag, _) = element(section, "data-field=\"changes\"");
    assert_eq!(attr(tag, "data-count"), changes.to_string(), "{section}");
    eprintln!(
        "dashboard: active setting {active} ({active_policy}), {points} points, {changes} changes, {} audits",
        field(section, "audits_in_window").0
    );

    // A screenshot, for a person to look at.
    let png = dir.path().join("dashboard.png");
    let screenshot = format!("--screenshot={}", png.display());
    tokio::task::spawn_blocking({
        let (page, dir) = (format!("{base}/dashboard"), dir.path().to_owned());
        move || chromium(&page, &[&screenshot], &dir)
    })
    .await
    .unwrap();
    let image = std::fs::read(&png).unwrap();
    assert!(image.starts_with(b"\x89PNG\r\n\x1a\n") && image.len() > 10_000, "{} bytes", image.len());
    if let Some(keep) = &keep {
        std::fs::copy(&png, keep).unwrap();
    }
}
