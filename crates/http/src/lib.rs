//! The HTTP layer: thin actix handlers over the composition root
//! (`modelroute_app`) and the domain crates, the one table that maps error
//! codes to statuses and JSON bodies, and [`Application`], which puts an
//! actix server in front of the platform.
//!
//! Handlers follow one shape: extract the caller, parse the body, call one
//! domain function, wrap the result.

mod auth;
mod body;
mod error;
mod query;
mod request_id;
mod routes;
mod session;
mod startup;
mod state;
mod wire;
mod wire_anthropic;

pub use error::{ApiError, status_of};
pub use startup::{Application, StartupError, raise_descriptor_limit};
