//! `--store URL`: which store it names, and opening it without ever creating one.

use std::path::Path;

use jobgraph::store::SqliteStore;

use crate::failure::Failure;

/// A store URL understood: a SQLite database file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target<'a> {
    /// What `SqliteStore::open` is given: the URL as written (with its `?` options), or the path.
    pub(crate) open: &'a str,
    /// The database file, which must exist.
    pub(crate) path: &'a str,
}

const FORMS: &str =
    "`sqlite://jobs.db` (relative), `sqlite:///var/lib/jobs.db` (absolute) or a path";

/// Which SQLite file `url` names; an error saying what is accepted otherwise.
pub(crate) fn parse(url: &str) -> Result<Target<'_>, Failure> {
    let lower = url.to_ascii_lowercase();
    if lower.starts_with("postgres:") || lower.starts_with("postgresql:") {
        return Err(Failure::new(format!(
            "`{url}` is a PostgreSQL store: PostgreSQL stores come with the distributed phase; \
             for now the store is a SQLite file: {FORMS}"
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
    Ok(Target { open: url, path })
}

/// Opens the store `url` names. A missing file is an error (this command reads and redrives
/// runs: it never creates an empty store by mistake); a file that is not a store is the
/// store's error.
pub(crate) async fn open(url: &str) -> Result<SqliteStore, Failure> {
    let target = parse(url)?;
    match Path::new(target.path).metadata() {
        Ok(meta) if meta.is_dir() => {
            return Err(Failure::new(format!(
                "the store `{url}` is a directory; give the database file inside it ({FORMS})"
            )));
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Failure::new(format!(
                "no store at `{}`: the file does not exist; give the database file your runners \
                 use with `--store` or JOBGRAPH_STORE ({FORMS})",
                target.path
            )));
        }
        Err(e) => {
            return Err(Failure::new(format!(
                "cannot read the store `{}`: {e}; check the path and its permissions",
                target.path
            )));
        }
    }
    SqliteStore::open(target.open).await.map_err(|e| {
        Failure::new(format!(
            "cannot open the store `{url}`: {}",
            Failure::chain(&e)
        ))
    })
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
            assert_eq!(parse(url), Ok(Target { open: url, path }), "{url}");
        }
    }

    #[test]
    fn other_urls_say_what_is_accepted() {
        let pg = parse("postgres://db/jobs").unwrap_err().to_string();
        assert!(
            pg.contains("PostgreSQL stores come with the distributed phase"),
            "{pg}"
        );
        assert!(parse("postgresql://x").is_err());
        let memory = parse("sqlite::memory:").unwrap_err().to_string();
        assert!(memory.contains("in-memory"), "{memory}");
        let other = parse("mysql://x/y").unwrap_err().to_string();
        assert!(other.contains("unknown store scheme `mysql`"), "{other}");
        assert!(other.contains("sqlite://jobs.db"), "{other}");
        for empty in ["", "  ", "sqlite://", "sqlite:?mode=ro"] {
            assert!(parse(empty).is_err(), "{empty:?}");
        }
    }
}
