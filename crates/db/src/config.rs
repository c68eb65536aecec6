use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The `[database]` section.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `sqlite://PATH` (relative to the working directory, or
    /// `sqlite:///absolute/path`) or `postgres://user:pass@host:port/db`.
    pub url: DatabaseUrl,
    /// Upper bound of pooled connections.
    pub max_connections: usize,
    /// How long a request waits for a pooled connection, and for a new one to open.
    pub connect_timeout_ms: u64,
    /// Apply pending migrations when the server starts.
    pub migrate_on_start: bool,
    /// SQLite only: how long a writer waits for the lock before failing.
    pub sqlite_busy_timeout_ms: u64,
    /// SQLite only: operations per transaction of the shared writer at most
    /// (the ledger's holds and settlements, the job queue's claims and
    /// completions). A batch takes what is queued when the writer is free —
    /// it never waits to fill — so this only bounds a batch under heavy
    /// load, where bigger batches write more per commit (docs/PERFORMANCE.md).
    pub sqlite_writer_max_batch: usize,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: DatabaseUrl::new("sqlite://data/modelroute.db"),
            max_connections: 16,
            connect_timeout_ms: 5_000,
            migrate_on_start: true,
            sqlite_busy_timeout_ms: 5_000,
            sqlite_writer_max_batch: 1024,
        }
    }
}

/// A database URL. Printed forms hide the password.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    /// Wraps a URL.
    #[must_use]
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    /// The URL with its password, for connecting only.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with any password replaced by `[redacted]`.
    #[must_use]
    pub fn redacted(&self) -> String {
        let Some((scheme, rest)) = self.0.split_once("://") else {
            return self.0.clone();
        };
        let (authority, path) = rest.split_once('/').map_or((rest, None), |(a, p)| (a, Some(p)));
        let authority = match authority.rsplit_once('@') {
            Some((userinfo, host)) => match userinfo.split_once(':') {
                Some((user, _password)) => format!("{user}:[redacted]@{host}"),
                None => authority.to_owned(),
            },
            None => authority.to_owned(),
        };
        match path {
            Some(p) => format!("{scheme}://{authority}/{p}"),
            None => format!("{scheme}://{authority}"),
        }
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl Serialize for DatabaseUrl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.redacted())
    }
}

impl<'de> Deserialize<'de> for DatabaseUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_is_redacted() {
        let u = DatabaseUrl::new("postgres://app:s3cret@db.internal:5432/modelroute");
        assert_eq!(u.redacted(), "postgres://app:[redacted]@db.internal:5432/modelroute");
        assert!(!format!("{u:?}").contains("s3cret"));
        let u = DatabaseUrl::new("postgres://postgres@127.0.0.1/x");
        assert_eq!(u.redacted(), "postgres://postgres@127.0.0.1/x");
        assert_eq!(DatabaseUrl::new("sqlite://data/a.db").redacted(), "sqlite://data/a.db");
    }
}
