//! The HTTP layer: thin actix handlers over the domain crates, the one
//! table that maps error codes to statuses and JSON bodies, the settings
//! (figment), and [`Application`], which builds and runs the server.
//!
//! Handlers follow one shape: extract the caller, parse the body, call one
//! domain function, wrap the result.

mod auth;
mod background;
mod body;
mod error;
mod notify;
pub mod operator;
mod query;
mod request_id;
mod routes;
mod session;
pub mod settings;
mod startup;
mod state;
mod wire;
mod wire_anthropic;

pub use error::{ApiError, status_of};
pub use operator::{BootstrapReport, Services, routes_of};
pub use settings::{BootstrapConfig, ServerConfig, Settings, SettingsError};
pub use startup::{Application, Reloader, StartupError, raise_descriptor_limit, run_worker};
