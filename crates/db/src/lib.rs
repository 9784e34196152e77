//! stopwise-db: where `stopwise serve` keeps what production traffic teaches.
//!
//! Every served request leaves a trace (the v1 schema `stopwise run` writes, with a
//! [`Served`](stopwise_core::Served) part), an audit of it leaves a second, and clients post
//! feedback on responses by id. [`Store`] holds them in SQLite (the default: one file, WAL) or
//! Postgres (several stateless replicas sharing one database), chosen by URL, with the same
//! versioned migrations and the same queries. [`Writer`] puts traces in from the request path
//! without ever blocking it: a bounded queue that counts and drops when full.

mod store;
mod writer;

pub use store::{Feedback, FeedbackError, Selection, StoredFeedback, Store};
pub use writer::{Writer, WriterStats};

/// Why the store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("store URL `{0}`: expected sqlite://PATH, sqlite::memory: or postgres://…")]
    Url(String),
    #[error("cannot create the folder of {path}: {source}")]
    Folder { path: String, source: std::io::Error },
    #[error("store {url}: {source}")]
    Connect { url: String, source: sqlx::Error },
    #[error("store migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("store: {0}")]
    Query(#[from] sqlx::Error),
    #[error("store row {id}: {why}")]
    Corrupt { id: String, why: String },
}

/// The default store: `stopwise.db` under `home` (stopwise's own folder, `$STOPWISE_HOME`).
pub fn default_url(home: &std::path::Path) -> String {
    format!("sqlite://{}", home.join("stopwise.db").display())
}

/// A URL with its password, if any, replaced by `***`, for logs and error messages.
pub fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let Some((credentials, host)) = rest.rsplit_once('@') else { return url.to_owned() };
    match credentials.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(redacted("postgres://sw:secret@db:5432/sw"), "postgres://sw:***@db:5432/sw");
        assert_eq!(redacted("postgres://sw@db/sw"), "postgres://sw@db/sw");
        assert_eq!(redacted("sqlite:///tmp/a.db"), "sqlite:///tmp/a.db");
    }
}
