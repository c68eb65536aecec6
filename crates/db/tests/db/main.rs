//! The data layer's tests, one binary: WAL checkpoints off the writer's
//! thread, and the shared SQLite writer.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod pool;
mod wal;
mod writer;
