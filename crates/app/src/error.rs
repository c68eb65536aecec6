//! What can go wrong wiring the platform or running a use case.

use modelroute_db::DbError;
use modelroute_identity::IdentityError;
use modelroute_ledger::LedgerError;
use modelroute_routing::RoutingError;

/// A failure of start-up or of a use case. The domain errors pass through
/// unchanged, so the HTTP table maps them by their own codes.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Data layer.
    #[error(transparent)]
    Db(#[from] DbError),
    /// Identity.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// Billing could not be set up.
    #[error(transparent)]
    Billing(modelroute_billing::BillingError),
    /// Files.
    #[error(transparent)]
    Files(#[from] modelroute_files::FileError),
    /// Webhooks.
    #[error(transparent)]
    Webhooks(#[from] modelroute_webhooks::WebhookError),
    /// Ledger.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// Catalogue.
    #[error(transparent)]
    Routing(#[from] RoutingError),
    /// Provider settings.
    #[error("invalid provider configuration: {0}")]
    Providers(String),
    /// Rate-limit settings.
    #[error("invalid rate-limit configuration: {0}")]
    RateLimits(String),
    /// The job queue.
    #[error(transparent)]
    Jobs(#[from] modelroute_jobs::JobError),
    /// Executions.
    #[error(transparent)]
    Execution(#[from] modelroute_executions::ExecutionError),
    /// An export of the org is already being written.
    #[error("an export of this organization is already being written; its link will be emailed")]
    ExportPending,
    /// An export's archive could not be written.
    #[error("writing the export: {0}")]
    Export(#[from] serde_json::Error),
}

impl modelroute_types::ErrorCode for AppError {
    fn code(&self) -> modelroute_types::Code {
        use modelroute_types::Code;
        match self {
            Self::Db(e) => e.code(),
            Self::Identity(e) => e.code(),
            Self::Billing(e) => e.code(),
            Self::Files(e) => e.code(),
            Self::Webhooks(e) => e.code(),
            Self::Ledger(e) => e.code(),
            Self::Routing(e) => e.code(),
            Self::Jobs(e) => e.code(),
            Self::Execution(e) => e.code(),
            // Configuration: the server's, never a client's.
            Self::Providers(_) | Self::RateLimits(_) | Self::Export(_) => Code::Internal,
            Self::ExportPending => Code::Conflict,
        }
    }

    fn param(&self) -> Option<&str> {
        match self {
            Self::Identity(e) => e.param(),
            Self::Billing(e) => e.param(),
            Self::Files(e) => e.param(),
            Self::Webhooks(e) => e.param(),
            Self::Ledger(e) => e.param(),
            Self::Routing(e) => e.param(),
            Self::Jobs(e) => e.param(),
            Self::Execution(e) => e.param(),
            Self::Db(_) | Self::Providers(_) | Self::RateLimits(_) | Self::Export(_) | Self::ExportPending => None,
        }
    }
}
