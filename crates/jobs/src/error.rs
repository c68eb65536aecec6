use modelroute_db::DbError;
use modelroute_types::{Code, ErrorCode};

/// Errors of the job queue.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// No such job.
    #[error("job not found")]
    NotFound,
    /// The job is not in a state the operation applies to.
    #[error("the job is {0}; {1}")]
    WrongState(&'static str, &'static str),
    /// A job's payload could not be turned into JSON.
    #[error("the job's payload is not JSON: {0}")]
    Payload(String),
    /// A stored value the queue does not know (a bug or a newer schema).
    #[error("unknown stored job status `{0}`")]
    UnknownStatus(String),
    /// The data layer failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<diesel::result::Error> for JobError {
    fn from(e: diesel::result::Error) -> Self {
        Self::Db(DbError::Query(e))
    }
}

impl ErrorCode for JobError {
    fn code(&self) -> Code {
        match self {
            Self::NotFound => Code::NotFound,
            Self::WrongState(..) => Code::Conflict,
            Self::Payload(_) => Code::InvalidRequest,
            Self::UnknownStatus(_) => Code::Internal,
            Self::Db(e) => e.code(),
        }
    }
}
