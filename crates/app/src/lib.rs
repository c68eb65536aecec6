//! The composition root of ModelRoute: what wires the domain crates into
//! one platform, with no HTTP in it.
//!
//! - [`Settings`]: every crate's typed section, loaded by figment
//!   (defaults → `modelroute.toml` → `MODELROUTE_*`).
//! - [`Services`]: the pool, identity, ledger, executor and billing,
//!   connected and wired; and the use cases that span crates (an org with
//!   its owner, project, ledger accounts and audit event; a key; a credit
//!   grant; the first-start bootstrap), called by the HTTP handlers and the
//!   CLI alike.
//! - [`Background`]: the job queue's workers with every kind of background
//!   job (see [`background`]), inside `modelroute serve` or as
//!   [`run_worker`].
//!
//! `crates/http` adapts this to HTTP; `bins/modelroute` calls both. An
//! internal team can run the platform from this crate alone:
//! `cargo run -p modelroute-app --example embedded`.

mod asynchronous;
pub mod background;
mod error;
mod export;
mod notify;
mod retention;
mod services;
pub mod settings;
mod worker;

pub use asynchronous::{EXECUTION_EVENTS, ExecutionView, NewExecution, SubmittedExecution};
pub use error::AppError;
pub use export::{EXPORT_JOB, ExportRequest};
pub use services::{BootstrapReport, NewKey, Services, routes_of};
pub use settings::{BootstrapConfig, ServerConfig, Settings, SettingsError};
pub use worker::{Background, Reloader, run_worker, shutdown_signal};
