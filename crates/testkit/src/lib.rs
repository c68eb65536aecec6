//! Test support shared by the crates' tests (a dev-dependency only).
//!
//! [`StandIn`] is a local HTTP server that speaks a provider's real wire
//! format — OpenAI chat completions, Anthropic Messages, Gemini
//! `generateContent` — streaming included, checks the provider's real
//! authentication headers, and answers in each provider's real error
//! shapes. Its parsing is written from the providers' documentation,
//! independently of the adapters under test.
//!
//! Its answers are deterministic (see [`brain`]); the upstream model name
//! chooses a behaviour ([`Fault`]), so one server can play a healthy
//! provider and a failing one at once.

// Test support: a stand-in that cannot bind a port or build a response
// should stop the test loudly, as test code does.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

mod brain;
mod listen;
pub mod oauth;
pub mod python;
pub mod receiver;
pub mod replicate;
mod server;
pub mod stripe;
mod wire;

pub use brain::{Answer, Ask, brain};
pub use server::{Fault, StandIn, Wire};

/// The API key every stand-in accepts.
pub const TEST_KEY: &str = "test-key";
