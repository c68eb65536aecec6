use modelroute_db::DbError;
use modelroute_ledger::LedgerError;
use modelroute_types::{Code, ErrorCode};

/// Errors of billing.
#[derive(Debug, thiserror::Error)]
pub enum BillingError {
    /// Stripe is not configured (manual-credits mode).
    #[error("card payments are not configured: this deployment runs in manual-credits mode")]
    StripeOff,
    /// A webhook whose signature does not verify.
    #[error("invalid Stripe-Signature: {0}")]
    BadSignature(String),
    /// A field of the input is invalid.
    #[error("{field}: {message}")]
    InvalidInput {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// Auto top-up needs a saved payment method first.
    #[error("save a payment method first (POST /v1/billing/payment-method)")]
    NoPaymentMethod,
    /// Stripe refused or failed a call.
    #[error("Stripe: {0}")]
    Stripe(String),
    /// The ledger failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// The data layer failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<diesel::result::Error> for BillingError {
    fn from(e: diesel::result::Error) -> Self {
        Self::Db(DbError::Query(e))
    }
}

impl ErrorCode for BillingError {
    fn code(&self) -> Code {
        match self {
            Self::StripeOff => Code::NotFound,
            Self::BadSignature(_) | Self::InvalidInput { .. } | Self::NoPaymentMethod => Code::InvalidRequest,
            Self::Stripe(_) => Code::UpstreamError,
            Self::Ledger(e) => e.code(),
            Self::Db(e) => e.code(),
        }
    }

    fn param(&self) -> Option<&str> {
        match self {
            Self::InvalidInput { field, .. } => Some(field),
            _ => None,
        }
    }
}
