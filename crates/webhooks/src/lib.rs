//! Customer webhooks: an org's endpoints (a URL, an event filter, a
//! `whsec_` secret shown once and sealed at rest, rotation with a grace
//! period), events recorded as one delivery per endpoint, each attempt
//! signed the Standard Webhooks way, made by a claim so that two workers
//! never both send it, recorded (status, latency, the first KiB of the
//! answer), and retried on a published schedule with jitter; a 410 or a
//! failure streak past a limit disables the endpoint. Outbound requests go
//! through [`outbound`], which refuses the platform's own network.
//! A library: the server's job queue calls [`Webhooks::attempt`].

mod config;
mod error;
pub mod outbound;
mod seal;
mod service;

pub use config::WebhooksConfig;
pub use error::WebhookError;
/// Standard Webhooks signatures (shared with the provider callbacks' check).
pub use modelroute_types::standard_webhooks as signature;
pub use service::{
    Attempt, Attempted, Delivery, DeliveryStatus, EVENT_TYPES, Endpoint, EndpointUpdate, NewEndpoint, Webhooks,
};
