//! The store itself: one pool, the migrations, and the few queries serve and the CLI need.

use std::time::Duration;

use futures_util::TryStreamExt;
use serde::Deserialize;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, Executor, Row};
use stopwise_core::trace::{parse_line, Trace};

use crate::{redacted, DbError};

static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Traces and feedback in SQLite or Postgres. Cheap to clone (a pool handle).
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
}

/// What a client says about a response: its gold answers, whether the answer it got was right,
/// or a rating. At least one is given.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Feedback {
    pub id: String,
    #[serde(default)]
    pub gold: Option<Vec<String>>,
    #[serde(default)]
    pub correct: Option<bool>,
    #[serde(default)]
    pub rating: Option<f64>,
}

/// Why a feedback body was refused, naming the field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FeedbackError {
    #[error("`{field}`: {why}")]
    Field { field: &'static str, why: String },
}

/// Longest response id, gold list and gold answer a feedback may carry: far beyond real ones.
pub const MAX_ID_BYTES: usize = 256;
pub const MAX_GOLD_ANSWERS: usize = 64;
pub const MAX_GOLD_BYTES: usize = 4096;

impl Feedback {
    /// Checks what serde cannot: an id, something to say, and sizes within bounds.
    pub fn validate(&self) -> Result<(), FeedbackError> {
        let field = |field, why: &str| Err(FeedbackError::Field { field, why: why.to_owned() });
        if self.id.is_empty() || self.id.len() > MAX_ID_BYTES {
            return field("id", &format!("must be a response id of 1 to {MAX_ID_BYTES} bytes"));
        }
        if self.gold.is_none() && self.correct.is_none() && self.rating.is_none() {
            return field("gold", "give at least one of `gold`, `correct` or `rating`");
        }
        if let Some(gold) = &self.gold {
            if gold.is_empty() || gold.len() > MAX_GOLD_ANSWERS {
                return field("gold", &format!("must list 1 to {MAX_GOLD_ANSWERS} answers"));
            }
            if gold.iter().any(|g| g.len() > MAX_GOLD_BYTES) {
                return field("gold", &format!("an answer is longer than {MAX_GOLD_BYTES} bytes"));
            }
        }
        if self.rating.is_some_and(|r| !r.is_finite()) {
            return field("rating", "must be a finite number");
        }
        Ok(())
    }
}

/// Feedback as stored, merged over every post for its id.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredFeedback {
    pub gold: Option<Vec<String>>,
    pub correct: Option<bool>,
    pub rating: Option<f64>,
}

/// Which traces a query returns.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Selection {
    /// Only this route's.
    pub route: Option<String>,
    /// Only traces that can replay any rule (audits, and full runs probed at every checkpoint);
    /// a request audited is given once, by its audit.
    pub complete_only: bool,
    /// Only requests that started in `[since_ms, until_ms)`.
    pub since_ms: Option<u64>,
    pub until_ms: Option<u64>,
    /// The most recent `last` only (still returned oldest first).
    pub last: Option<u64>,
    /// Only this response's traces (served and audit).
    pub response_id: Option<String>,
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Store {
    /// Opens (creating when missing) the store at `url` and brings its schema up to date. A
    /// SQLite file's folder is created; the file runs in WAL mode.
    pub async fn open(url: &str) -> Result<Store, DbError> {
        sqlx::any::install_default_drivers();
        let sqlite = url.starts_with("sqlite:");
        if !sqlite && !url.starts_with("postgres://") && !url.starts_with("postgresql://") {
            return Err(DbError::Url(redacted(url)));
        }
        let memory = url.contains(":memory:");
        let mut full_url = url.to_owned();
        if sqlite && !memory {
            let path = url.trim_start_matches("sqlite:").trim_start_matches("//");
            let path = path.split('?').next().unwrap_or_default();
            if path.is_empty() {
                return Err(DbError::Url(url.to_owned()));
            }
            if let Some(parent) = std::path::Path::new(path).parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).map_err(|source| DbError::Folder { path: path.to_owned(), source })?;
            }
            if !url.contains("mode=") {
                full_url.push_str(if url.contains('?') { "&mode=rwc" } else { "?mode=rwc" });
            }
        }
        let pool = AnyPoolOptions::new()
            // Each connection to `:memory:` would be a database of its own.
            .max_connections(if memory { 1 } else { 4 })
            .acquire_timeout(Duration::from_secs(5))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if sqlite {
                        // WAL: readers (the CLI, the dashboard) never block the writer. NORMAL
                        // sync keeps every committed row through a crash of the process.
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA synchronous = NORMAL").await?;
                        conn.execute("PRAGMA busy_timeout = 5000").await?;
                    }
                    Ok(())
                })
            })
            .connect(&full_url)
            .await
            .map_err(|source| DbError::Connect { url: redacted(url), source })?;
        MIGRATOR.run(&pool).await?;
        Ok(Store { pool })
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> Result<(), DbError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Writes served traces in one transaction; writing one again replaces it.
    pub async fn put_traces(&self, traces: &[Trace]) -> Result<(), DbError> {
        let mut tx = self.pool.begin().await?;
        for trace in traces {
            let Some(served) = &trace.served else {
                return Err(DbError::Corrupt { id: trace.id.clone(), why: "not a served trace".into() });
            };
            sqlx::query(
                "INSERT INTO traces (response_id, audit, route, started_ms, policy_version, stopped_at, complete, \
                 delivered_tokens, generated_tokens, answer, body) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
                 ON CONFLICT (response_id, audit) DO UPDATE SET route = excluded.route, started_ms = excluded.started_ms, \
                 policy_version = excluded.policy_version, stopped_at = excluded.stopped_at, complete = excluded.complete, \
                 delivered_tokens = excluded.delivered_tokens, generated_tokens = excluded.generated_tokens, \
                 answer = excluded.answer, body = excluded.body",
            )
            .bind(served.response_id.clone())
            .bind(i64::from(served.audit))
            .bind(served.route.clone())
            .bind(to_i64(served.started_ms))
            .bind(served.policy_version.clone())
            .bind(served.stopped_at.map(i64::from))
            .bind(i64::from(served.complete))
            .bind(i64::from(served.delivered_tokens))
            .bind(i64::from(trace.final_.tokens))
            .bind(trace.final_.answer.clone())
            .bind(trace.to_line())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Whether a served request with this response id has its trace here.
    pub async fn has_trace(&self, response_id: &str) -> Result<bool, DbError> {
        let row = sqlx::query("SELECT COUNT(*) FROM traces WHERE response_id = $1 AND audit = 0")
            .bind(response_id.to_owned())
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<i64, _>(0)? > 0)
    }

    /// Stores feedback, merged over what earlier posts for the id said; committed on return.
    pub async fn put_feedback(&self, feedback: &Feedback, received_ms: u64) -> Result<(), DbError> {
        let gold = feedback.gold.as_ref().map(|g| serde_json::to_string(g).unwrap_or_default());
        sqlx::query(
            "INSERT INTO feedback (response_id, gold, correct, rating, received_ms) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (response_id) DO UPDATE SET gold = COALESCE(excluded.gold, feedback.gold), \
             correct = COALESCE(excluded.correct, feedback.correct), rating = COALESCE(excluded.rating, feedback.rating), \
             received_ms = excluded.received_ms",
        )
        .bind(feedback.id.clone())
        .bind(gold)
        .bind(feedback.correct.map(i64::from))
        .bind(feedback.rating.map(|r| r.to_string()))
        .bind(to_i64(received_ms))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The feedback stored for a response id.
    pub async fn feedback(&self, response_id: &str) -> Result<Option<StoredFeedback>, DbError> {
        let row = sqlx::query("SELECT gold, correct, rating FROM feedback WHERE response_id = $1")
            .bind(response_id.to_owned())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| {
            Ok(StoredFeedback {
                gold: parse_gold(response_id, row.try_get(0)?)?,
                correct: row.try_get::<Option<i64>, _>(1)?.map(|c| c != 0),
                rating: row.try_get::<Option<String>, _>(2)?.and_then(|r| r.parse().ok()),
            })
        })
        .transpose()
    }

    /// Counts of what the store holds: (served traces, audits, feedback).
    pub async fn counts(&self) -> Result<(u64, u64, u64), DbError> {
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM traces WHERE audit = 0), (SELECT COUNT(*) FROM traces WHERE audit = 1), \
             (SELECT COUNT(*) FROM feedback)",
        )
        .fetch_one(&self.pool)
        .await?;
        let get = |i| row.try_get::<i64, _>(i).map(|n| n.max(0) as u64);
        Ok((get(0)?, get(1)?, get(2)?))
    }

    /// Calls `each` with every selected trace, oldest first, with its feedback joined: gold
    /// answers given become the trace's gold; `correct: true` without gold makes the answer the
    /// client received its gold. Stops early when `each` returns `false`. Streams: memory stays
    /// flat however many traces there are.
    pub async fn traces(&self, selection: &Selection, mut each: impl FnMut(Trace) -> bool) -> Result<(), DbError> {
        // The most recent `last`, oldest first: an inner query picks them newest first.
        let sql = "SELECT body, gold, correct, served_answer FROM (\
             SELECT t.body AS body, f.gold AS gold, f.correct AS correct, s.answer AS served_answer, \
                    t.started_ms AS started_ms, t.response_id AS response_id, t.audit AS audit \
             FROM traces t \
             LEFT JOIN feedback f ON f.response_id = t.response_id \
             LEFT JOIN traces s ON s.response_id = t.response_id AND s.audit = 0 \
             WHERE ($1 = '' OR t.route = $1) AND t.started_ms >= $2 AND t.started_ms < $3 \
               AND ($6 = '' OR t.response_id = $6) \
               AND ($4 = 0 OR (t.complete = 1 AND NOT (t.audit = 0 AND EXISTS \
                   (SELECT 1 FROM traces a WHERE a.response_id = t.response_id AND a.audit = 1)))) \
             ORDER BY t.started_ms DESC, t.response_id DESC, t.audit DESC LIMIT $5) picked \
             ORDER BY started_ms, response_id, audit";
        let mut rows = sqlx::query(sql)
            .bind(selection.route.clone().unwrap_or_default())
            .bind(to_i64(selection.since_ms.unwrap_or(0)))
            .bind(to_i64(selection.until_ms.unwrap_or(u64::MAX)))
            .bind(i64::from(selection.complete_only))
            .bind(to_i64(selection.last.unwrap_or(u64::MAX)))
            .bind(selection.response_id.clone().unwrap_or_default())
            .fetch(&self.pool);
        while let Some(row) = rows.try_next().await? {
            if !each(joined(&row)?) {
                break;
            }
        }
        Ok(())
    }
}

impl Store {
    /// The audit of a response, feedback joined, if it was audited.
    pub async fn audit(&self, response_id: &str) -> Result<Option<Trace>, DbError> {
        let selection = Selection { response_id: Some(response_id.to_owned()), ..Selection::default() };
        let mut audit = None;
        self.traces(&selection, |trace| {
            if trace.served.as_ref().is_some_and(|s| s.audit) {
                audit = Some(trace);
            }
            true
        })
        .await?;
        Ok(audit)
    }

    /// Keeps a change of a route's setting (`body`: its JSON record).
    pub async fn put_change(&self, route: &str, at_ms: u64, kind: &str, body: &str) -> Result<(), DbError> {
        static NEXT: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);
        // Two changes in one millisecond (a fallback and a promotion) stay apart; replicas
        // writing at once differ in their bodies' evidence, and the id makes the key unique.
        let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) ^ i64::from(std::process::id()) << 32;
        sqlx::query("INSERT INTO policy_changes (id, route, at_ms, kind, body) VALUES ($1, $2, $3, $4, $5)")
            .bind(id)
            .bind(route.to_owned())
            .bind(to_i64(at_ms))
            .bind(kind.to_owned())
            .bind(body.to_owned())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records the setting a route serves, unless a newer one is recorded already.
    pub async fn put_route_state(
        &self,
        route: &str,
        active: u64,
        policy: &str,
        updated_ms: u64,
    ) -> Result<(), DbError> {
        sqlx::query(
            "INSERT INTO route_state (route, active, policy, updated_ms) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (route) DO UPDATE SET active = excluded.active, policy = excluded.policy, \
             updated_ms = excluded.updated_ms WHERE route_state.updated_ms < excluded.updated_ms",
        )
        .bind(route.to_owned())
        .bind(to_i64(active))
        .bind(policy.to_owned())
        .bind(to_i64(updated_ms))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Every route's recorded setting: (route, ladder position, policy JSON, updated_ms).
    pub async fn route_states(&self) -> Result<Vec<(String, u64, String, u64)>, DbError> {
        let rows = sqlx::query("SELECT route, active, policy, updated_ms FROM route_state ORDER BY route")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                Ok((
                    row.try_get(0)?,
                    row.try_get::<i64, _>(1)?.max(0) as u64,
                    row.try_get(2)?,
                    row.try_get::<i64, _>(3)?.max(0) as u64,
                ))
            })
            .collect()
    }

    /// A route's changes, oldest first: (at_ms, kind, JSON record).
    pub async fn changes(&self, route: &str) -> Result<Vec<(u64, String, String)>, DbError> {
        let rows = sqlx::query("SELECT at_ms, kind, body FROM policy_changes WHERE route = $1 ORDER BY at_ms, id")
            .bind(route.to_owned())
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|row| Ok((row.try_get::<i64, _>(0)?.max(0) as u64, row.try_get(1)?, row.try_get(2)?))).collect()
    }
}

fn parse_gold(id: &str, gold: Option<String>) -> Result<Option<Vec<String>>, DbError> {
    gold.map(|g| {
        serde_json::from_str(&g).map_err(|e| DbError::Corrupt { id: id.to_owned(), why: format!("gold: {e}") })
    })
    .transpose()
}

fn joined(row: &AnyRow) -> Result<Trace, DbError> {
    let body: String = row.try_get(0)?;
    let mut trace = parse_line(&body).map_err(|e| DbError::Corrupt { id: String::new(), why: e.to_string() })?;
    let gold = parse_gold(&trace.id, row.try_get(1)?)?;
    let correct: Option<i64> = row.try_get(2)?;
    let served_answer: Option<String> = row.try_get(3)?;
    match (gold, correct, served_answer) {
        (Some(gold), _, _) => trace.gold = gold,
        (None, Some(1), Some(answer)) if !answer.is_empty() => trace.gold = vec![answer],
        _ => {}
    }
    Ok(trace)
}
