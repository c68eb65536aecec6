//! The HTTP server's tests, one binary (one link step): every module starts
//! the real server on port 0 over a fresh database of its own as one shared
//! `helpers::TestApp` (its client, its `Reply`), and adds what it needs in
//! `impl TestApp` blocks of its own (a browser session, a signed webhook, an
//! execution's attempts); a module with stand-ins wraps the app with them.
//!
//! - `endpoints`: completions, streaming, usage, audit, keys, limits on bodies
//! - `auth`: accounts, sessions, members, tenancy
//! - `oauth`: Google and GitHub sign-in against their stand-ins
//! - `files`: uploads, downloads, signed links, refusals, files as execution inputs
//! - `billing`: Stripe top-ups, webhooks, auto top-up against its stand-in
//! - `limits`: rate limits in process and on Redis, across instances
//! - `adapters`: the OpenAI, Anthropic and Gemini adapters against their stand-ins
//! - `webhooks`: endpoints, signed deliveries through the background, the outbound policy
//! - `upstream`: failover, retries and breakers against the stand-ins' faults
//! - `asynchronous`: `POST /v1/executions` against the Replicate stand-in: callbacks, polling, re-hosting, webhooks

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod adapters;
mod asynchronous;
mod auth;
mod billing;
mod endpoints;
mod files;
mod helpers;
mod limits;
mod oauth;
mod privacy;
mod upstream;
mod webhooks;
