use modelroute_types::{Code, ErrorCode};

/// Errors of the data layer.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The URL's scheme is neither `sqlite` nor `postgres`.
    #[error("unsupported database URL scheme `{0}`: use sqlite://PATH or postgres://HOST/DB")]
    UnsupportedUrl(String),
    /// The database could not be reached or a connection could not be opened.
    #[error("cannot connect to the database: {0}")]
    Connect(String),
    /// No pooled connection became free in time.
    #[error("timed out waiting for a database connection")]
    PoolTimeout,
    /// A query failed.
    #[error("database query failed: {0}")]
    Query(#[from] diesel::result::Error),
    /// Applying migrations failed.
    #[error("migration failed: {0}")]
    Migration(String),
    /// Preparing the database's folder failed.
    #[error("cannot prepare the database folder: {0}")]
    Io(#[from] std::io::Error),
    /// The SQLite writer thread stopped or misbehaved.
    #[error("the SQLite writer failed: {0}")]
    Writer(&'static str),
    /// A stored value no variant of its type names (a newer server's row,
    /// or a corrupted one): an error, never quietly a default.
    #[error("unknown stored {what} `{value}`")]
    UnknownValue {
        /// What the column holds (`hold status`, `role`, ...).
        what: &'static str,
        /// The value found.
        value: String,
    },
}

impl DbError {
    /// `value` is not a stored name of `what`.
    #[must_use]
    pub fn unknown(what: &'static str, value: &str) -> Self {
        Self::UnknownValue { what, value: value.chars().take(64).collect() }
    }
}

impl ErrorCode for DbError {
    fn code(&self) -> Code {
        match self {
            Self::UnsupportedUrl(_) => Code::InvalidConfig,
            Self::Connect(_) | Self::PoolTimeout => Code::DatabaseUnavailable,
            Self::Query(_) | Self::Migration(_) | Self::Io(_) | Self::Writer(_) | Self::UnknownValue { .. } => {
                Code::Internal
            }
        }
    }
}
