//! Billing with Stripe: top-ups through Checkout, webhooks verified by their
//! signature that credit the ledger exactly once per payment (the ledger's
//! idempotency key is the payment intent), saved payment methods, auto
//! top-up (one off-session payment at a time per org, whatever the number of
//! replicas), and low-balance alerts. Without a Stripe key, billing is the
//! ledger's manual-credits mode. A library: no HTTP server in here.
//!
//! Depends on the ledger (a sideways dependency, see docs/ARCHITECTURE.md):
//! a verified payment *is* a ledger credit, and reading balances is how
//! auto top-up knows when to pay.

mod config;
mod error;
mod service;
pub mod webhook;

pub use config::{BillingConfig, StripeConfig};
pub use error::BillingError;
pub use service::{Alert, AutoTopUp, Billing, Checkout, Notifier, WebhookOutcome};
