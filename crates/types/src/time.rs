//! Time as stored: UTC, microsecond precision (PostgreSQL's), so a value
//! written to either backend reads back equal.

use chrono::{DateTime, NaiveDateTime, SubsecRound, Utc};

/// The current UTC time, truncated to microseconds.
#[must_use]
pub fn now() -> NaiveDateTime {
    Utc::now().naive_utc().trunc_subsecs(6)
}

/// Renders a stored timestamp as RFC 3339 UTC, e.g. `2026-11-22T10:00:00.123456Z`.
#[must_use]
pub fn rfc3339(t: NaiveDateTime) -> String {
    DateTime::<Utc>::from_naive_utc_and_offset(t, Utc).to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Seconds since the Unix epoch, as OpenAI's `created` fields carry it.
#[must_use]
pub fn unix_seconds(t: NaiveDateTime) -> i64 {
    t.and_utc().timestamp()
}
