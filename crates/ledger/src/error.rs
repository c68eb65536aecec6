use modelroute_db::DbError;
use modelroute_types::{Code, ErrorCode, Money};

use crate::HoldStatus;

/// Errors of the ledger.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The available balance does not cover the amount.
    #[error("insufficient balance: {needed} is needed and {available} is available")]
    InsufficientBalance {
        /// The amount asked for.
        needed: Money,
        /// What the org has available.
        available: Money,
    },
    /// Amounts must be positive.
    #[error("amount must be positive (got {0})")]
    NonPositiveAmount(Money),
    /// An adjustment needs a reason of 1 to 500 characters.
    #[error("an adjustment needs a reason (1 to 500 characters)")]
    InvalidReason,
    /// No such hold.
    #[error("hold not found")]
    HoldNotFound,
    /// The hold was already resolved in a way this call cannot replay.
    #[error("hold is already {}", .0.as_str())]
    AlreadyResolved(HoldStatus),
    /// An idempotency key was reused for a different operation.
    #[error("idempotency key reused with a different request")]
    IdempotencyConflict,
    /// The group-commit writer is gone (the runtime is shutting down).
    #[error("the ledger's writer stopped")]
    Stopped,
    /// A bug: an entry whose postings do not sum to zero was refused.
    #[error("refused an unbalanced journal entry")]
    Unbalanced,
    /// A bug or a broken database: what the database changed disagrees
    /// with what the ledger decided (the transaction is rolled back).
    #[error("the ledger's rows disagree with its decision: {0}")]
    Inconsistent(&'static str),
    /// An amount overflowed.
    #[error("amount overflow")]
    Overflow,
    /// The data layer failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<diesel::result::Error> for LedgerError {
    fn from(e: diesel::result::Error) -> Self {
        Self::Db(DbError::Query(e))
    }
}

impl ErrorCode for LedgerError {
    fn code(&self) -> Code {
        match self {
            Self::InsufficientBalance { .. } => Code::InsufficientBalance,
            Self::NonPositiveAmount(_) | Self::InvalidReason => Code::InvalidRequest,
            Self::HoldNotFound => Code::NotFound,
            Self::AlreadyResolved(_) => Code::Conflict,
            Self::IdempotencyConflict => Code::IdempotencyConflict,
            Self::Overflow | Self::Unbalanced | Self::Inconsistent(_) | Self::Stopped => Code::Internal,
            Self::Db(e) => e.code(),
        }
    }
}
