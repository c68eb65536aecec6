//! The ledger's tests, one binary (one link step): its invariants on both
//! backends, and the model-based property test.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;
mod invariants;
mod model;
