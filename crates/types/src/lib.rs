//! Shared vocabulary of ModelRoute: typed ids, money, time, secrets and the
//! machine-readable error codes every crate maps its errors to.
//!
//! This crate has no I/O (but for reading `MODELROUTE_FAILPOINT` once, see
//! [`failpoint`]) and depends on nothing else in the workspace.

mod error;
mod failpoint;
mod ids;
mod money;
pub mod retention;
mod secret;
pub mod standard_webhooks;
pub mod text;
pub mod time;

pub use error::{Code, ErrorCode};
pub use failpoint::failpoint;
pub use ids::{
    AccountId, ApiKeyId, AuditEventId, EmailId, EntryId, EventId, ExecutionId, FileId, HoldId, IdError, InvitationId,
    JobId, OrgId, ProjectId, SessionId, UserId, WebhookAttemptId, WebhookDeliveryId, WebhookEndpointId,
};
pub use money::{Money, MoneyError, PricePerMTok, UNITS_PER_USD, deserialize_usd, usd_string};
pub use secret::Secret;
