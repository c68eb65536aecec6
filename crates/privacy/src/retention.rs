//! The schedule and its sweep.

use std::fmt;
use std::time::Duration;

use chrono::NaiveDateTime;
use futures_util::future::BoxFuture;
use modelroute_types::retention::Due;
use serde::Serialize;

use crate::PrivacyError;

/// Answers what of a class is past `cutoff` (see [`Due`]).
pub type DueFn = Box<dyn Fn(NaiveDateTime) -> BoxFuture<'static, Result<Due, String>> + Send + Sync>;

/// Deletes at most `batch` rows of a class past `cutoff`; answers how many.
pub type PurgeFn = Box<dyn Fn(NaiveDateTime, usize) -> BoxFuture<'static, Result<usize, String>> + Send + Sync>;

/// One data class: its name, what it is kept for, and its owning crate's
/// two functions.
pub struct Class {
    name: &'static str,
    kept: &'static str,
    period: Duration,
    due: DueFn,
    purge: PurgeFn,
}

impl fmt::Debug for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Class").field("name", &self.name).field("period", &self.period).finish_non_exhaustive()
    }
}

impl Class {
    /// A class named `name` (stable: it names the metrics), whose rows go
    /// `period` after the moment `kept` describes ("after expiry", …).
    #[must_use]
    pub fn new(name: &'static str, kept: &'static str, period: Duration, due: DueFn, purge: PurgeFn) -> Self {
        Self { name, kept, period, due, purge }
    }

    /// Its name.
    #[must_use]
    pub const fn name(&self) -> &'static str {
        self.name
    }

    /// The cutoff at `now`: rows whose moment is before it are due.
    fn cutoff(&self, now: NaiveDateTime) -> NaiveDateTime {
        let period = chrono::Duration::from_std(self.period).unwrap_or(chrono::Duration::MAX);
        now.checked_sub_signed(period).unwrap_or(NaiveDateTime::MIN)
    }
}

/// A class as the report shows it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ClassReport {
    /// The class.
    pub class: &'static str,
    /// Its period, in seconds.
    pub period_secs: u64,
    /// From when the period counts.
    pub kept: &'static str,
    /// Rows whose moment is before this are due.
    pub cutoff: NaiveDateTime,
    /// Rows due now.
    pub due: u64,
    /// The oldest row's moment, due or not.
    pub oldest: Option<NaiveDateTime>,
}

/// What a sweep did to one class.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Swept {
    /// The class.
    pub class: &'static str,
    /// Rows deleted (none on a dry run).
    pub deleted: u64,
    /// Rows that were due when it started.
    pub due: u64,
}

/// The retention schedule: every class, swept in batches.
#[derive(Debug, Default)]
pub struct Retention {
    classes: Vec<Class>,
    batch: usize,
}

impl Retention {
    /// An empty schedule deleting at most `batch` rows per statement.
    #[must_use]
    pub fn new(batch: usize) -> Self {
        Self { classes: Vec::new(), batch: batch.max(1) }
    }

    /// With `class` added.
    #[must_use]
    pub fn with(mut self, class: Class) -> Self {
        self.classes.push(class);
        self
    }

    /// The classes' names, in order.
    #[must_use]
    pub fn names(&self) -> Vec<&'static str> {
        self.classes.iter().map(Class::name).collect()
    }

    /// Every class (or only `only`) at `now`: its cutoff, what is due and its oldest row.
    ///
    /// # Errors
    /// A class's crate failed, or `only` names no class.
    pub async fn report(&self, now: NaiveDateTime, only: Option<&str>) -> Result<Vec<ClassReport>, PrivacyError> {
        let mut reports = Vec::new();
        for class in self.selected(only)? {
            let cutoff = class.cutoff(now);
            let due =
                (class.due)(cutoff).await.map_err(|message| PrivacyError::Class { class: class.name, message })?;
            record_oldest(class.name, now, due.oldest);
            reports.push(ClassReport {
                class: class.name,
                period_secs: class.period.as_secs(),
                kept: class.kept,
                cutoff,
                due: due.due,
                oldest: due.oldest,
            });
        }
        Ok(reports)
    }

    /// Deletes what every class (or only `only`) has past its period at
    /// `now`, batch by batch until a batch comes back short; `progress`
    /// hears each class's running total against what was due. Interrupted,
    /// the next sweep carries on: a batch deletes only what is due, so
    /// nothing is deleted twice or early.
    ///
    /// # Errors
    /// A class's crate failed (the classes before it were swept), or
    /// `only` names no class.
    pub async fn sweep(
        &self,
        now: NaiveDateTime,
        only: Option<&str>,
        progress: &mut (dyn FnMut(&Swept) + Send),
    ) -> Result<Vec<Swept>, PrivacyError> {
        let mut swept = Vec::new();
        for class in self.selected(only)? {
            let cutoff = class.cutoff(now);
            let failed = |message| PrivacyError::Class { class: class.name, message };
            let due = (class.due)(cutoff).await.map_err(failed)?;
            let mut done = Swept { class: class.name, deleted: 0, due: due.due };
            progress(&done);
            loop {
                let deleted = (class.purge)(cutoff, self.batch).await.map_err(failed)?;
                let n = u64::try_from(deleted).unwrap_or(u64::MAX);
                done.deleted = done.deleted.saturating_add(n);
                metrics::counter!("retention_rows_deleted_total", "class" => class.name).increment(n);
                progress(&done);
                if deleted < self.batch {
                    break;
                }
            }
            if done.deleted > 0 {
                tracing::info!(class = class.name, deleted = done.deleted, "retention sweep");
            }
            let after = (class.due)(cutoff).await.map_err(failed)?;
            record_oldest(class.name, now, after.oldest);
            swept.push(done);
        }
        Ok(swept)
    }

    fn selected(&self, only: Option<&str>) -> Result<Vec<&Class>, PrivacyError> {
        match only {
            None => Ok(self.classes.iter().collect()),
            Some(name) => self
                .classes
                .iter()
                .find(|c| c.name == name)
                .map(|c| vec![c])
                .ok_or_else(|| PrivacyError::UnknownClass { name: name.to_owned(), known: self.names().join(", ") }),
        }
    }
}

/// The age of a class's oldest row, as a gauge (0 when it has none).
fn record_oldest(class: &'static str, now: NaiveDateTime, oldest: Option<NaiveDateTime>) {
    let age = oldest.map_or(0.0, |o| (now - o).as_seconds_f64().max(0.0));
    metrics::gauge!("retention_oldest_row_seconds", "class" => class).set(age);
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use chrono::{NaiveDate, NaiveDateTime};
    use modelroute_types::retention::Due;

    use super::{Class, Retention};

    fn at(day: u32) -> NaiveDateTime {
        NaiveDate::from_ymd_opt(2026, 1, day).and_then(|d| d.and_hms_opt(0, 0, 0)).unwrap_or_default()
    }

    /// A class over an in-memory table of row moments.
    fn class(rows: &Arc<Mutex<Vec<NaiveDateTime>>>) -> Class {
        let (a, b) = (Arc::clone(rows), Arc::clone(rows));
        Class::new(
            "things",
            "after creation",
            Duration::from_secs(7 * 86_400),
            Box::new(move |cutoff| {
                let rows = a.lock().map(|r| r.clone()).unwrap_or_default();
                Box::pin(async move {
                    let due = rows.iter().filter(|r| **r < cutoff).count();
                    Ok(Due::new(due, rows.iter().min().copied()))
                })
            }),
            Box::new(move |cutoff, batch| {
                let mut deleted = 0;
                if let Ok(mut rows) = b.lock() {
                    while deleted < batch
                        && let Some(i) = rows.iter().position(|r| *r < cutoff)
                    {
                        rows.remove(i);
                        deleted += 1;
                    }
                }
                Box::pin(async move { Ok(deleted) })
            }),
        )
    }

    #[tokio::test]
    async fn a_sweep_deletes_what_is_past_its_period_in_batches_and_not_a_day_early() {
        let rows = Arc::new(Mutex::new((1..=9).map(at).collect::<Vec<_>>()));
        let retention = Retention::new(2).with(class(&rows));
        // On the 15th the cutoff is the 8th: days 1–7 are due, 8 and 9 not.
        let report = retention.report(at(15), None).await.unwrap_or_default();
        assert_eq!(report.first().map(|r| (r.due, r.oldest)), Some((7, Some(at(1)))));
        let mut seen = Vec::new();
        let swept = retention.sweep(at(15), None, &mut |s| seen.push(s.deleted)).await.unwrap_or_default();
        assert_eq!(swept.first().map(|s| (s.due, s.deleted)), Some((7, 7)));
        assert_eq!(seen, vec![0, 2, 4, 6, 7], "batches of two, and the short one ends it");
        assert_eq!(rows.lock().map(|r| r.clone()).unwrap_or_default(), vec![at(8), at(9)]);
        // Again: nothing more, not one day before.
        let again = retention.sweep(at(15), None, &mut |_| {}).await.unwrap_or_default();
        assert_eq!(again.first().map(|s| s.deleted), Some(0));
    }

    #[tokio::test]
    async fn an_unknown_class_is_named() {
        let rows = Arc::new(Mutex::new(Vec::new()));
        let retention = Retention::new(10).with(class(&rows));
        let err = retention.report(at(1), Some("nope")).await.err().map(|e| e.to_string());
        assert_eq!(err.as_deref(), Some("no data class named `nope` (the classes: things)"));
    }
}
