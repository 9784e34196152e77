//! The store against real databases: a SQLite file, and a real Postgres server (started by
//! `scripts/test`, which exports `STOPWISE_TEST_POSTGRES_URL`). Every case runs on both.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use stopwise_core::answer::Task;
use stopwise_core::trace::{Checkpoint, Final, ProbeSettings, Served, Trace};
use stopwise_db::{Feedback, Selection, Store, Writer};

/// A fresh, empty store of each kind; the SQLite one lives as long as the returned guard.
async fn stores() -> Vec<(Store, Option<tempfile::TempDir>)> {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Store::open(&format!("sqlite://{}", dir.path().join("sub/stopwise.db").display())).await.unwrap();
    let admin = std::env::var("STOPWISE_TEST_POSTGRES_URL")
        .expect("STOPWISE_TEST_POSTGRES_URL is not set: run the tests with scripts/test, which starts Postgres");
    vec![(sqlite, Some(dir)), (postgres_database(&admin).await, None)]
}

/// A database of its own on the test server, so that tests running at once never meet.
async fn postgres_database(admin: &str) -> Store {
    let name = format!("t{}_{}", std::process::id(), NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    Store::open(&stopwise_db::create_postgres_database(admin, &name).await.unwrap()).await.unwrap()
}

static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

fn served(id: &str, route: &str, started_ms: u64, complete: bool, audit: bool) -> Trace {
    let checkpoint = |tokens, answer: &str| Checkpoint {
        tokens,
        answer: answer.into(),
        probe_text: answer.into(),
        answer_tokens: 1,
        mean_prob: 0.9,
        min_prob: 0.8,
        segment_logprob: f32::NEG_INFINITY,
        segment_entropy: 0.5,
    };
    Trace {
        v: 1,
        id: id.into(),
        dataset: route.into(),
        task: Task::Numeric,
        question: None,
        gold: Vec::new(),
        model: "m".into(),
        prompt_tokens: 7,
        probe: ProbeSettings { suffix: "\nFinal answer: ".into(), max_tokens: 8, interval: 32 },
        checkpoints: vec![checkpoint(32, "3"), checkpoint(64, "4")],
        final_: Final {
            tokens: if audit { 90 } else { 64 },
            answer: if audit { "5".into() } else { "4".into() },
            finish_reason: "stop".into(),
            text: None,
            text_offsets: Vec::new(),
        },
        served: Some(Served {
            route: route.into(),
            response_id: id.into(),
            policy: "consistency(2)".into(),
            policy_version: "v1".into(),
            started_ms,
            duration_ms: 5,
            stopped_at: (!complete).then_some(64),
            delivered_tokens: 65,
            complete,
            audit,
        }),
    }
}

async fn all(store: &Store, selection: &Selection) -> Vec<Trace> {
    let mut out = Vec::new();
    store
        .traces(selection, |t| {
            out.push(t);
            true
        })
        .await
        .unwrap();
    out
}

fn ids(traces: &[Trace]) -> Vec<(String, bool)> {
    traces.iter().map(|t| (t.id.clone(), t.served.as_ref().unwrap().audit)).collect()
}

#[tokio::test]
async fn traces_come_back_as_written_and_selections_pick_them() {
    for (store, _guard) in stores().await {
        let written = vec![
            served("r1", "a", 10, false, false),
            served("r1", "a", 10, true, true),
            served("r2", "b", 20, true, false),
            served("r3", "a", 30, false, false),
        ];
        store.put_traces(&written).await.unwrap();
        // Writing again replaces, never duplicates.
        store.put_traces(&written[..1]).await.unwrap();
        let every = all(&store, &Selection::default()).await;
        assert_eq!(every, written);
        let complete = all(&store, &Selection { complete_only: true, ..Default::default() }).await;
        assert_eq!(ids(&complete), [("r1".into(), true), ("r2".into(), false)], "an audit stands for its request");
        let route_a = all(&store, &Selection { route: Some("a".into()), ..Default::default() }).await;
        assert_eq!(route_a.len(), 3);
        let recent = all(&store, &Selection { last: Some(2), ..Default::default() }).await;
        assert_eq!(ids(&recent), [("r2".into(), false), ("r3".into(), false)], "the last two, oldest first");
        let window = all(&store, &Selection { since_ms: Some(20), until_ms: Some(30), ..Default::default() }).await;
        assert_eq!(ids(&window), [("r2".into(), false)]);
        assert!(store.has_trace("r1").await.unwrap() && !store.has_trace("nope").await.unwrap());
        assert_eq!(store.counts().await.unwrap(), (3, 1, 0));
    }
}

#[tokio::test]
async fn feedback_merges_per_id_and_labels_the_traces() {
    for (store, _guard) in stores().await {
        store.put_traces(&[served("r1", "a", 10, false, false), served("r1", "a", 10, true, true)]).await.unwrap();
        store.put_traces(&[served("r2", "a", 20, true, false)]).await.unwrap();
        let correct = Feedback { id: "r1".into(), gold: None, correct: Some(true), rating: None };
        store.put_feedback(&correct, 1).await.unwrap();
        store.put_feedback(&correct, 2).await.unwrap();
        store.put_feedback(&Feedback { rating: Some(0.5), correct: None, ..correct.clone() }, 3).await.unwrap();
        let stored = store.feedback("r1").await.unwrap().unwrap();
        assert_eq!((stored.gold, stored.correct, stored.rating), (None, Some(true), Some(0.5)));
        // Feedback for a trace not written yet is kept, and joined once the trace comes.
        let gold =
            Feedback { id: "r9".into(), gold: Some(vec!["12".into(), "12.0".into()]), correct: None, rating: None };
        store.put_feedback(&gold, 4).await.unwrap();
        store.put_traces(&[served("r9", "a", 30, true, false)]).await.unwrap();
        let traces = all(&store, &Selection { complete_only: true, ..Default::default() }).await;
        let golds: Vec<_> = traces.iter().map(|t| (t.id.as_str(), t.gold.clone())).collect();
        assert_eq!(
            golds,
            [
                // `correct` makes the answer the client got (the served one, not the audit's) gold.
                ("r1", vec!["4".to_owned()]),
                ("r2", vec![]),
                ("r9", vec!["12".to_owned(), "12.0".to_owned()]),
            ]
        );
        assert_eq!(store.counts().await.unwrap(), (3, 1, 2));
    }
}

#[tokio::test]
async fn reopening_a_store_keeps_its_rows_and_schema() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("s.db").display());
    let store = Store::open(&url).await.unwrap();
    store.put_traces(&[served("r1", "a", 10, true, false)]).await.unwrap();
    drop(store);
    let again = Store::open(&url).await.unwrap();
    assert_eq!(again.counts().await.unwrap(), (1, 0, 0));
}

#[tokio::test]
async fn bad_urls_are_named_without_their_password() {
    let err = Store::open("mysql://u:secret@h/db").await.unwrap_err().to_string();
    assert!(err.contains("mysql://u:***@h/db") && !err.contains("secret"), "{err}");
    let err = Store::open("postgres://u:secret@127.0.0.1:1/db").await.unwrap_err().to_string();
    assert!(!err.contains("secret"), "{err}");
}

#[tokio::test(flavor = "current_thread")]
async fn a_full_queue_drops_and_counts_without_waiting() {
    for (store, _guard) in stores().await {
        let writer = Writer::start(store.clone(), 3);
        // The writer task cannot run before this test yields: the queue fills at 3.
        let kept: Vec<bool> = (0..5).map(|i| writer.submit(served(&format!("q{i}"), "a", i, true, false))).collect();
        assert_eq!(kept, [true, true, true, false, false]);
        assert_eq!(writer.depth(), 3);
        writer.flush().await;
        let stats = writer.stats();
        use std::sync::atomic::Ordering::Relaxed;
        assert_eq!((stats.written.load(Relaxed), stats.dropped_full.load(Relaxed)), (3, 2));
        assert_eq!(store.counts().await.unwrap().0, 3);
        assert_eq!(writer.depth(), 0);
    }
}

#[tokio::test]
async fn a_failed_write_is_counted_and_reported_then_recovers() {
    for (store, _guard) in stores().await {
        let writer = Writer::start(store.clone(), 8);
        let mut unserved = served("x", "a", 1, true, false);
        unserved.served = None;
        writer.submit(unserved);
        writer.flush().await;
        use std::sync::atomic::Ordering::Relaxed;
        assert_eq!(writer.stats().dropped_error.load(Relaxed), 1);
        assert!(writer.stats().failing().unwrap().contains("not a served trace"));
        writer.submit(served("ok", "a", 2, true, false));
        writer.flush().await;
        assert!(writer.stats().failing().is_none());
        assert_eq!(store.counts().await.unwrap().0, 1);
    }
}

#[test]
fn feedback_bodies_are_checked_field_by_field() {
    let parse = |body: &str| -> Result<Feedback, String> {
        let fb: Feedback = serde_json::from_str(body).map_err(|e| e.to_string())?;
        fb.validate().map_err(|e| e.to_string())?;
        Ok(fb)
    };
    assert!(parse(r#"{"id":"r","gold":["4"]}"#).is_ok());
    assert!(parse(r#"{"id":"r","correct":false}"#).is_ok());
    for (body, field) in [
        (r#"{"id":"r"}"#, "at least one"),
        (r#"{"id":"","correct":true}"#, "`id`"),
        (r#"{"id":"r","gold":[]}"#, "`gold`"),
        (r#"{"id":"r","correct":"yes"}"#, "invalid type"),
        (r#"{"id":"r","correct":true,"extra":1}"#, "unknown field"),
    ] {
        let err = parse(body).unwrap_err();
        assert!(err.contains(field), "{body}: {err}");
    }
    let long = format!(r#"{{"id":"{}","correct":true}}"#, "x".repeat(300));
    assert!(parse(&long).unwrap_err().contains("`id`"));
}

#[tokio::test]
async fn the_newest_route_state_wins() {
    for (store, _guard) in stores().await {
        store.put_route_state("a", 1, "{}", 10).await.unwrap();
        store.put_route_state("a", 2, "{}", 5).await.unwrap();
        assert_eq!(
            store.route_states().await.unwrap(),
            [("a".to_owned(), 1, "{}".to_owned(), 10)],
            "an older state is ignored"
        );
        store.put_route_state("a", 0, "{\"type\":\"never\"}", 11).await.unwrap();
        assert_eq!(store.route_states().await.unwrap()[0].1, 0);
    }
}
