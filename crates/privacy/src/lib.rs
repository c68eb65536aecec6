//! Privacy and retention.
//!
//! Every data class the platform keeps has a retention period (the
//! ModelRoute privacy policy's section 5, `[privacy]` in the
//! configuration). The tables belong to the crates that write them, so each
//! owning crate answers, for its own classes, how many rows are past a
//! cutoff and how old its oldest row is, and deletes them in batches; this
//! crate holds the schedule and drives them ([`Retention`]): a report of
//! what is due, and a sweep, batch by batch (no batch holds its locks for
//! long), with metrics of what it deleted and of the oldest row kept.
//!
//! It depends on no domain crate: the composition root hands it each
//! class as a pair of functions ([`Class::new`]), so an internal team can
//! drive its own tables by the same schedule.

mod config;
mod error;
mod export;
mod retention;

pub use config::PrivacyConfig;
pub use error::PrivacyError;
pub use export::{EXPORT_SCHEMA_VERSION, Export};
pub use modelroute_types::retention::Due;
pub use retention::{Class, ClassReport, DueFn, PurgeFn, Retention, Swept};
