//! `--store URL`: which store it names, and opening it without ever creating one.

use std::borrow::Cow;
use std::path::Path;

use jobgraph::store::{PgOptions, PgStore, SqliteStore, Store};

use crate::failure::Failure;

/// A store URL understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target<'a> {
    /// A SQLite database file.
    Sqlite {
        /// What `SqliteStore::open` is given: the URL as written (with its `?` options), or the
        /// path.
        open: &'a str,
        /// The database file, which must exist.
        path: &'a str,
    },
    /// A PostgreSQL database (`postgres://` or `postgresql://`), given to `PgStore` as written.
    Postgres {
        /// The URL.
        url: &'a str,
    },
}

/// An opened store.
pub(crate) enum Opened {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

impl Opened {
    /// The store, for the commands.
    pub(crate) fn store(&self) -> &dyn Store {
        match self {
            Opened::Sqlite(store) => store,
            Opened::Postgres(store) => store,
        }
    }

    /// Its queue.
    pub(crate) fn queue(&self) -> &dyn jobgraph::store::queue::Queue {
        match self {
            Opened::Sqlite(store) => store,
            Opened::Postgres(store) => store,
        }
    }

    /// Closes its connections.
    pub(crate) async fn close(&self) {
        match self {
            Opened::Sqlite(store) => store.close().await,
            Opened::Postgres(store) => store.close().await,
        }
    }
}

const FORMS: &str = "`sqlite://jobs.db` (relative), `sqlite:///var/lib/jobs.db` (absolute) or a \
                     path; or `postgres://user:password@host/database` (PostgreSQL)";

/// Which store `url` names; an error saying what is accepted otherwise.
pub(crate) fn parse(url: &str) -> Result<Target<'_>, Failure> {
    let lower = url.to_ascii_lowercase();
    if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
        return Ok(Target::Postgres { url });
    }
    if lower.starts_with("postgres:") || lower.starts_with("postgresql:") {
        return Err(Failure::new(format!(
            "`{}` is not a PostgreSQL URL: it starts `postgres://` (or `postgresql://`), as in \
             `postgres://user:password@host/database`",
            shown(url)
        )));
    }
    if lower.contains(":memory:") || lower.contains("mode=memory") {
        return Err(Failure::new(format!(
            "`{url}` is an in-memory database, empty in every new process; give the database file \
             your runners use: {FORMS}"
        )));
    }
    let path = if lower.starts_with("sqlite:") {
        let rest = &url["sqlite:".len()..];
        let rest = rest.strip_prefix("//").unwrap_or(rest);
        rest.split('?').next().unwrap_or(rest)
    } else if let Some((scheme, _)) = url.split_once("://") {
        return Err(Failure::new(format!(
            "unknown store scheme `{scheme}` in `{url}`; a store is {FORMS}"
        )));
    } else {
        url
    };
    if path.trim().is_empty() {
        return Err(Failure::new(format!(
            "the store URL `{url}` names no file; a store is {FORMS}"
        )));
    }
    Ok(Target::Sqlite { open: url, path })
}

/// `url` as messages show it: a PostgreSQL URL's password (in its user part, or a `password=`
/// parameter) replaced by `***`; any other URL as it is.
pub(crate) fn shown(url: &str) -> Cow<'_, str> {
    let lower = url.to_ascii_lowercase();
    if !lower.starts_with("postgres:") && !lower.starts_with("postgresql:") {
        return Cow::Borrowed(url);
    }
    let mut out = url.to_owned();
    // `scheme://user:password@host...`: the authority ends at the first `/`, `?` or `#`.
    if let Some(start) = out.find("://").map(|i| i + 3) {
        let end = out[start..]
            .find(['/', '?', '#'])
            .map_or(out.len(), |i| start + i);
        if let Some(at) = out[start..end].rfind('@').map(|i| start + i)
            && let Some(colon) = out[start..at].find(':').map(|i| start + i)
        {
            out.replace_range(colon + 1..at, "***");
        }
    }
    // `?password=...` (and `&password=...`), up to the next parameter.
    let mut from = 0;
    while let Some(found) = out[from..].find("password=").map(|i| from + i) {
        let value = found + "password=".len();
        let starts_parameter = found > 0 && matches!(out.as_bytes()[found - 1], b'?' | b'&');
        let end = out[value..]
            .find(['&', '#'])
            .map_or(out.len(), |i| value + i);
        if starts_parameter {
            out.replace_range(value..end, "***");
        }
        from = value;
    }
    Cow::Owned(out)
}

/// Opens the store `url` names. A missing file, or a PostgreSQL database without jobgraph's
/// tables, is an error (this command reads and redrives runs: it never creates an empty store
/// by mistake); a file that is not a store is the store's error.
pub(crate) async fn open(url: &str) -> Result<Opened, Failure> {
    let (open, path) = match parse(url)? {
        Target::Sqlite { open, path } => (open, path),
        Target::Postgres { url } => return open_postgres(url).await.map(Opened::Postgres),
    };
    match Path::new(path).metadata() {
        Ok(meta) if meta.is_dir() => {
            return Err(Failure::new(format!(
                "the store `{url}` is a directory; give the database file inside it ({FORMS})"
            )));
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Failure::new(format!(
                "no store at `{path}`: the file does not exist; give the database file your \
                 runners use with `--store` or JOBGRAPH_STORE ({FORMS})"
            )));
        }
        Err(e) => {
            return Err(Failure::new(format!(
                "cannot read the store `{path}`: {e}; check the path and its permissions"
            )));
        }
    }
    SqliteStore::open(open)
        .await
        .map(Opened::Sqlite)
        .map_err(|e| {
            Failure::new(format!(
                "cannot open the store `{url}`: {}",
                Failure::chain(&e)
            ))
        })
}

/// Whether the database has jobgraph's schema (its version table).
const HAS_STORE: &str = "SELECT to_regclass('jobgraph_meta') IS NOT NULL";

/// Opens a PostgreSQL store whose schema exists (`PgStore` would create it in any database).
async fn open_postgres(url: &str) -> Result<PgStore, Failure> {
    use sqlx::Connection as _;
    let cannot = |e: &dyn std::error::Error| {
        Failure::new(format!(
            "cannot open the store `{}`: {}",
            shown(url),
            Failure::chain(e)
        ))
    };
    let mut conn = sqlx::PgConnection::connect(url)
        .await
        .map_err(|e| cannot(&jobgraph::store::StoreError::Database(Box::new(e))))?;
    let has_store: bool = sqlx::query_scalar(HAS_STORE)
        .fetch_one(&mut conn)
        .await
        .map_err(|e| cannot(&e))?;
    let _ = conn.close().await;
    if !has_store {
        return Err(Failure::new(format!(
            "no store in the database `{}`: it has no jobgraph tables (`jobgraph_meta`, \
             `jobgraph_runs`...) in its search path; give the database your runners use with \
             `--store` or JOBGRAPH_STORE",
            shown(url)
        )));
    }
    // One command, a few queries: one connection.
    PgStore::connect_with(url, PgOptions::new().with_max_connections(1))
        .await
        .map_err(|e| cannot(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_urls_and_paths_name_a_file() {
        for (url, path) in [
            ("sqlite://jobs.db", "jobs.db"),
            ("sqlite:///var/lib/jobs.db", "/var/lib/jobs.db"),
            ("sqlite:jobs.db?mode=ro", "jobs.db"),
            ("SQLITE://a.db", "a.db"),
            ("jobs.db", "jobs.db"),
            ("/tmp/x y/jobs.db", "/tmp/x y/jobs.db"),
        ] {
            assert_eq!(parse(url), Ok(Target::Sqlite { open: url, path }), "{url}");
        }
    }

    #[test]
    fn postgres_urls_name_a_database() {
        for url in [
            "postgres://db/jobs",
            "postgresql://jobs:secret@db.internal:5433/jobs?sslmode=require",
            "POSTGRES:///jobs?host=%2Fvar%2Frun%2Fpostgresql",
        ] {
            assert_eq!(parse(url), Ok(Target::Postgres { url }), "{url}");
        }
        let bare = parse("postgres:jobs").unwrap_err().to_string();
        assert!(bare.contains("starts `postgres://`"), "{bare}");
    }

    #[test]
    fn passwords_are_not_shown() {
        for (url, shows) in [
            (
                "postgres://jobs:s3cr%40t@db:5432/jobs",
                "postgres://jobs:***@db:5432/jobs",
            ),
            (
                "postgresql://jobs:secret@db?password=other&sslmode=require",
                "postgresql://jobs:***@db?password=***&sslmode=require",
            ),
            ("postgres://jobs@db/jobs", "postgres://jobs@db/jobs"),
            (
                "postgres:///jobs?host=%2Ftmp",
                "postgres:///jobs?host=%2Ftmp",
            ),
            (
                "postgres://db/jobs?user=a&password=b",
                "postgres://db/jobs?user=a&password=***",
            ),
            ("sqlite://a:b@c.db", "sqlite://a:b@c.db"),
        ] {
            assert_eq!(shown(url), shows, "{url}");
        }
    }

    #[test]
    fn other_urls_say_what_is_accepted() {
        let memory = parse("sqlite::memory:").unwrap_err().to_string();
        assert!(memory.contains("in-memory"), "{memory}");
        let other = parse("mysql://x/y").unwrap_err().to_string();
        assert!(other.contains("unknown store scheme `mysql`"), "{other}");
        assert!(other.contains("sqlite://jobs.db"), "{other}");
        assert!(other.contains("postgres://"), "{other}");
        for empty in ["", "  ", "sqlite://", "sqlite:?mode=ro"] {
            assert!(parse(empty).is_err(), "{empty:?}");
        }
    }
}
