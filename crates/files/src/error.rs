use modelroute_db::DbError;
use modelroute_types::{Code, ErrorCode};

/// Errors of the file store.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// No such file in this org (or it belongs to another: the same answer).
    #[error("no file `{0}`")]
    NotFound(String),
    /// A field of the input is invalid.
    #[error("{field}: {message}")]
    InvalidInput {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// The upload has no bytes.
    #[error("file: the file is empty")]
    Empty,
    /// The upload is larger than the limit.
    #[error("file: larger than the limit of {limit} bytes")]
    TooLarge {
        /// The limit, in bytes.
        limit: u64,
    },
    /// The org's storage quota would be exceeded.
    #[error("file: the organization's file quota of {quota} bytes would be exceeded ({used} bytes used)")]
    QuotaExceeded {
        /// The quota.
        quota: u64,
        /// What is used.
        used: u64,
    },
    /// A content type that is not allowed, or content that is not what its
    /// type says.
    #[error("file: {0}")]
    UnsupportedType(String),
    /// A byte range outside the file.
    #[error("range: outside the file's {size} bytes")]
    RangeNotSatisfiable {
        /// The file's size.
        size: u64,
    },
    /// A signed link that was altered or does not verify.
    #[error("this download link is invalid")]
    BadSignature,
    /// A signed link whose time is up.
    #[error("this download link has expired")]
    LinkExpired,
    /// The client's body stream failed or was cut off.
    #[error("the upload was cut off: {0}")]
    Interrupted(String),
    /// Downloading a provider's output failed (not allowed, too large, too
    /// slow, not the type it should be).
    #[error("re-hosting an output failed: {0}")]
    Rehost(String),
    /// The object store failed.
    #[error("the file store failed: {0}")]
    Store(String),
    /// The data layer failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The configuration is invalid.
    #[error("[files] {0}")]
    Config(String),
}

impl From<diesel::result::Error> for FileError {
    fn from(e: diesel::result::Error) -> Self {
        Self::Db(DbError::Query(e))
    }
}

impl From<object_store::Error> for FileError {
    fn from(e: object_store::Error) -> Self {
        Self::Store(e.to_string())
    }
}

impl ErrorCode for FileError {
    fn code(&self) -> Code {
        match self {
            Self::NotFound(_) => Code::NotFound,
            Self::InvalidInput { .. } | Self::Empty | Self::Interrupted(_) => Code::InvalidRequest,
            Self::TooLarge { .. } => Code::PayloadTooLarge,
            Self::QuotaExceeded { .. } => Code::QuotaExceeded,
            Self::UnsupportedType(_) => Code::UnsupportedMediaType,
            Self::RangeNotSatisfiable { .. } => Code::RangeNotSatisfiable,
            Self::BadSignature | Self::LinkExpired => Code::PermissionDenied,
            Self::Rehost(_) => Code::UpstreamError,
            Self::Store(_) => Code::StorageUnavailable,
            Self::Db(e) => e.code(),
            Self::Config(_) => Code::InvalidConfig,
        }
    }

    fn param(&self) -> Option<&str> {
        match self {
            Self::InvalidInput { field, .. } => Some(field),
            Self::Empty | Self::TooLarge { .. } | Self::UnsupportedType(_) | Self::QuotaExceeded { .. } => Some("file"),
            Self::RangeNotSatisfiable { .. } => Some("range"),
            _ => None,
        }
    }
}
