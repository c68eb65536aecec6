//! The job queue's tests, one binary: its guarantees in one process on both
//! backends (`queue`), and across processes on PostgreSQL (`processes`: this
//! binary re-runs itself as worker processes).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod processes;
mod queue;
