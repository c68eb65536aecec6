//! The privacy crate's errors.

use modelroute_types::{Code, ErrorCode};

/// What can go wrong driving retention.
#[derive(Debug, thiserror::Error)]
pub enum PrivacyError {
    /// A class's owning crate failed (its database, usually); the sweep
    /// stops there and the next one resumes (deleting is idempotent).
    #[error("retention of {class} failed: {message}")]
    Class {
        /// The class.
        class: &'static str,
        /// What its crate said.
        message: String,
    },
    /// No class by that name.
    #[error("no data class named `{name}` (the classes: {known})")]
    UnknownClass {
        /// The name asked for.
        name: String,
        /// The classes there are, comma-separated.
        known: String,
    },
}

impl ErrorCode for PrivacyError {
    fn code(&self) -> Code {
        match self {
            Self::Class { .. } => Code::Internal,
            Self::UnknownClass { .. } => Code::NotFound,
        }
    }
}
