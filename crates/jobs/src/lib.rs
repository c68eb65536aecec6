//! The durable job queue: background work that survives restarts and takes
//! effect once across replicas. A library: it knows nothing of HTTP or of
//! what the jobs do.
//!
//! - **Jobs live in the database** (`jobs`, both backends). [`Enqueue`] is
//!   implemented for a connection of either backend, so a job can be
//!   enqueued inside the transaction of the row that causes it and commits
//!   or rolls back with it; [`Queue::enqueue`] runs its own.
//! - **Claims carry a lease.** A worker claims pending jobs of one queue in
//!   one statement (`FOR UPDATE SKIP LOCKED` on PostgreSQL; on SQLite the
//!   single writer makes the statement atomic), renews the lease while the
//!   job runs, and a job whose worker died goes back to pending when its
//!   lease lapses ([`Queue::reap`]). Delivery is therefore **at least once**:
//!   a handler must make a second run have no second effect (an idempotency
//!   key, a claim, a stable id).
//! - **Retries** with exponential backoff and full jitter up to the kind's
//!   `max_attempts`, then `dead` (kept, listed, retryable by an operator).
//! - **A unique key** per kind gives at most one pending or running job per
//!   key; **`run_at`** schedules one; **periodic jobs** ([`Periodic`]) run
//!   once per period across every replica (the period is claimed in
//!   `job_schedules` in the transaction that enqueues its job).
//! - **Queues** each have their own concurrency, so a flood of one kind
//!   cannot starve another.
//! - **Workers** ([`Workers`]) wake on an enqueue in the same process and
//!   poll as a fallback (another process's enqueue); on shutdown they stop
//!   claiming, give running jobs the shutdown timeout to finish, and hand
//!   back the leases of the rest.

mod config;
mod error;
mod lane;
mod queue;
mod schedule;
mod worker;

pub use config::JobsConfig;
pub use error::JobError;
pub use queue::{
    DEFAULT_MAX_ATTEMPTS, Enqueue, Enqueued, Job, JobFilter, JobInfo, JobStatus, KindStats, NewJob, Queue,
};
pub use schedule::Periodic;
pub use worker::{Failure, Handler, Registry, WorkerConfig, Workers};
