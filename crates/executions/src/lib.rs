//! Executions: the one place that composes the ledger, the routing engine
//! and the provider adapters (see docs/ARCHITECTURE.md for why this crate,
//! and only this one, depends on its siblings).
//!
//! An execution's life: plan a route (no writes) → place a hold for the
//! worst case (the admission decision) → record the execution → call the
//! provider → settle the actual cost, or release the hold on failure →
//! record the outcome. Everything after the hold runs in a spawned task, so
//! a client that disconnects cannot cancel it half-way: the hold is always
//! resolved and the record always finished.
//!
//! The executor's phases, one module each: `admission`
//! (profile, plan, hold, record), `attempts` (routes in order, retries,
//! bulkheads, breakers, the typed decision record), `pump` (a stream from
//! its first event to its end, continued on another route when cut),
//! `probes` (open routes probed on a schedule), `settlement` (settle or release, and the
//! record), `recovery` (records a stopped server left running), `queued`
//! (asynchronous executions: submitted, run by a job, canceled), `remote`
//! (asynchronous providers: callbacks, polls, the end applied once). `executor`
//! holds the parts and the entry points.

mod admission;
mod analytics;
mod attempts;
mod config;
mod error;
mod executor;
mod leases;
mod preferences;
mod probes;
mod pump;
mod queued;
mod record;
mod recovery;
mod remote;
mod retention;
mod settlement;
mod store;
mod usage;

pub use analytics::{Analytics, MAX_ANALYTICS_DAYS, ModelDay};
pub use config::ExecutionsConfig;
pub use error::ExecutionError;
pub use executor::{Caller, Completed, Executor, StreamItem, StreamingExecution, ToolCallChunk, WeakExecutor};
pub use preferences::{CACHE_TTL as PREFERENCES_CACHE_TTL, Fallbacks, MAX_FALLBACKS, OrgRouting, RequestPreferences};
pub use queued::{
    AsyncHooks, AsyncInput, ExecutionEvent, IdempotencyKey, Orphans, OutputFile, Ran, Submission, Submitted,
};
pub use record::{Execution, ExecutionStatus};
pub use remote::{CallbackError, CallbackOutcome};
pub use usage::{ExecutionFilter, ExecutionPage, UsageFilter, UsagePage, UsageRecord};
