//! Analytics that identify no one (the privacy policy's aggregate
//! statistics): per model and day, how many executions ended, their tokens,
//! error rate and latency distribution, published only for buckets that
//! at least `k` orgs contributed to, so no execution can be rebuilt and no
//! small tenant singled out.
//!
//! The scan reads finished executions page by page (keyed by id); the org
//! of each row only counts distinct contributors and is dropped with its
//! bucket. Nothing of the answer names an org, a user, a key or an
//! execution: it is built from model names, days, counts and durations.

use std::collections::{BTreeMap, HashSet};

use chrono::{NaiveDate, NaiveDateTime};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use modelroute_db::db_run;
use modelroute_db::schema::executions;
use serde::Serialize;

use modelroute_ledger::Ledger;

use crate::{ExecutionError, Executor};

/// Rows read per page.
const PAGE: i64 = 5_000;

/// The longest window one report covers.
pub const MAX_ANALYTICS_DAYS: i64 = 93;

/// One published bucket: a model on a day.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ModelDay {
    /// The day (UTC) the executions ended.
    pub day: NaiveDate,
    /// The model slug asked for.
    pub model: String,
    /// Executions that ended that day.
    pub executions: u64,
    /// Of them, those that failed (any end but success or cancellation).
    pub failed: u64,
    /// `failed / executions`.
    pub error_rate: f64,
    /// Input tokens, summed.
    pub input_tokens: u64,
    /// Output tokens, summed.
    pub output_tokens: u64,
    /// Latency from start to end, milliseconds: the 50th, 90th and 99th
    /// percentiles (nearest rank).
    pub latency_ms_p50: u64,
    /// The 90th percentile.
    pub latency_ms_p90: u64,
    /// The 99th percentile.
    pub latency_ms_p99: u64,
}

/// A report over a window.
#[derive(Clone, Debug, Serialize)]
pub struct Analytics {
    /// The published buckets, by day then model.
    pub buckets: Vec<ModelDay>,
    /// How many buckets fewer than `k` orgs contributed to (withheld).
    pub suppressed: u64,
    /// The threshold applied.
    pub k: u32,
}

#[derive(Default)]
struct Bucket {
    orgs: HashSet<String>,
    executions: u64,
    failed: u64,
    input_tokens: u64,
    output_tokens: u64,
    latencies: Vec<u64>,
}

type ScanRow = (
    String,
    String,
    String,
    String,
    NaiveDateTime,
    Option<NaiveDateTime>,
    Option<NaiveDateTime>,
    Option<i64>,
    Option<i64>,
);

/// The `q`-th percentile of sorted `values` (nearest rank).
fn percentile(sorted: &[u64], q: u64) -> u64 {
    let n = u64::try_from(sorted.len()).unwrap_or(u64::MAX);
    let rank = (q.saturating_mul(n).div_ceil(100)).max(1);
    usize::try_from(rank - 1).ok().and_then(|i| sorted.get(i)).copied().unwrap_or(0)
}

fn non_negative(v: Option<i64>) -> u64 {
    v.and_then(|v| u64::try_from(v).ok()).unwrap_or(0)
}

impl<L: Ledger + 'static> Executor<L> {
    /// Executions that ended in `[from, to)` (at most
    /// [`MAX_ANALYTICS_DAYS`] days), aggregated per model and day, buckets
    /// of fewer than `k` distinct orgs withheld (`k` at least 2).
    ///
    /// # Errors
    /// [`ExecutionError::InvalidRequest`] for an empty or too long window, or
    /// `k` below 2; a database failure.
    pub async fn analytics(&self, from: NaiveDate, to: NaiveDate, k: u32) -> Result<Analytics, ExecutionError> {
        let days = (to - from).num_days();
        if !(1..=MAX_ANALYTICS_DAYS).contains(&days) {
            return Err(ExecutionError::InvalidRequest {
                param: "to",
                message: format!(
                    "the window must cover 1 to {MAX_ANALYTICS_DAYS} days (from is inclusive, to exclusive)"
                ),
            });
        }
        if k < 2 {
            return Err(ExecutionError::InvalidRequest {
                param: "k",
                message: "k must be at least 2: a bucket of one org identifies it".into(),
            });
        }
        let (start, end) = (from.and_time(chrono::NaiveTime::MIN), to.and_time(chrono::NaiveTime::MIN));
        let mut buckets: BTreeMap<(NaiveDate, String), Bucket> = BTreeMap::new();
        let mut after = String::new();
        loop {
            let cursor = after.clone();
            let rows: Vec<ScanRow> = db_run!(self.pool(), |conn| executions::table
                .filter(executions::finished_at.ge(start))
                .filter(executions::finished_at.lt(end))
                .filter(executions::id.gt(&cursor))
                .order(executions::id)
                .select((
                    executions::id,
                    executions::org_id,
                    executions::model,
                    executions::status,
                    executions::created_at,
                    executions::started_at,
                    executions::finished_at,
                    executions::input_tokens,
                    executions::output_tokens,
                ))
                .limit(PAGE)
                .load(conn)
                .await)?;
            let full = rows.len() == usize::try_from(PAGE).unwrap_or(usize::MAX);
            for (id, org, model, status, created, started, finished, input, output) in rows {
                after = id;
                let Some(finished) = finished else { continue };
                let b = buckets.entry((finished.date(), model)).or_default();
                b.orgs.insert(org);
                b.executions += 1;
                if !matches!(status.as_str(), "succeeded" | "canceled") {
                    b.failed += 1;
                }
                b.input_tokens = b.input_tokens.saturating_add(non_negative(input));
                b.output_tokens = b.output_tokens.saturating_add(non_negative(output));
                let took = finished - started.unwrap_or(created);
                b.latencies.push(u64::try_from(took.num_milliseconds()).unwrap_or(0));
            }
            if !full {
                break;
            }
        }
        let threshold = usize::try_from(k).unwrap_or(usize::MAX);
        let mut report = Analytics { buckets: Vec::new(), suppressed: 0, k };
        for ((day, model), mut b) in buckets {
            if b.orgs.len() < threshold {
                report.suppressed += 1;
                continue;
            }
            b.latencies.sort_unstable();
            // In parts per million first: exact in an f64, whatever the counts.
            let ppm = b.failed.saturating_mul(1_000_000).checked_div(b.executions).unwrap_or(0);
            let error_rate = f64::from(u32::try_from(ppm).unwrap_or(1_000_000)) / 1e6;
            report.buckets.push(ModelDay {
                day,
                model,
                executions: b.executions,
                failed: b.failed,
                error_rate,
                input_tokens: b.input_tokens,
                output_tokens: b.output_tokens,
                latency_ms_p50: percentile(&b.latencies, 50),
                latency_ms_p90: percentile(&b.latencies, 90),
                latency_ms_p99: percentile(&b.latencies, 99),
            });
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!((percentile(&v, 50), percentile(&v, 90), percentile(&v, 99)), (50, 90, 99));
        assert_eq!(percentile(&[7], 99), 7);
        assert_eq!(percentile(&[], 50), 0);
        assert_eq!(percentile(&[1, 2, 3], 50), 2);
    }
}
