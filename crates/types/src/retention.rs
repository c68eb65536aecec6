//! What a data class has past its retention cutoff: each crate that owns
//! tables answers it for its own classes, and the privacy crate drives them.

use chrono::NaiveDateTime;
use serde::Serialize;

/// A class's rows past a cutoff, and its oldest row.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Due {
    /// Rows whose moment (expiry, use, end, creation: the class's own) is
    /// before the cutoff.
    pub due: u64,
    /// The oldest row's moment, due or not (`None`: the class is empty).
    pub oldest: Option<NaiveDateTime>,
}

impl Due {
    /// `due` rows (a count as the database gives it), the oldest at `oldest`.
    #[must_use]
    pub fn new(due: impl TryInto<u64>, oldest: Option<NaiveDateTime>) -> Self {
        Self { due: due.try_into().unwrap_or(0), oldest }
    }
}
