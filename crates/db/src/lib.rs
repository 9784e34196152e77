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

pub use store::{Feedback, FeedbackError, Selection, Store, StoredFeedback};
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

/// Creates the database `name` on the Postgres server at `admin_url` (any database the user may
/// connect to) and returns the URL of the new one: a database of its own for a replica set or a
/// test.
pub async fn create_postgres_database(admin_url: &str, name: &str) -> Result<String, DbError> {
    use sqlx::{Connection, Executor};
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') {
        return Err(DbError::Url(format!("database name `{name}`: use a-z, 0-9 and _")));
    }
    let (base, _) = admin_url.rsplit_once('/').ok_or_else(|| DbError::Url(redacted(admin_url)))?;
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(admin_url)
        .await
        .map_err(|source| DbError::Connect { url: redacted(admin_url), source })?;
    conn.execute(format!("CREATE DATABASE {name}").as_str()).await?;
    Ok(format!("{base}/{name}"))
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
