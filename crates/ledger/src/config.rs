use serde::{Deserialize, Serialize};

/// The `[ledger]` section.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LedgerConfig {
    /// The ledger's currency (ISO 4217). Amounts are in its nano-units.
    pub currency: String,
    /// A hold not resolved within this many seconds is released by the sweeper.
    pub hold_timeout_secs: u64,
    /// How often the server's sweeper looks for expired holds.
    pub sweep_interval_secs: u64,
    /// SQLite: put holds and settlements that arrive together in one
    /// transaction (group commit). Off: one transaction each. PostgreSQL
    /// always runs each as its own one-statement transaction.
    pub group_commit: bool,
    /// Operations per group-commit transaction at most. A batch takes what
    /// is queued when the writer is free (never waits to fill), so this only
    /// bounds a batch under heavy load, where bigger batches write more per
    /// commit (docs/PERFORMANCE.md).
    pub group_commit_max_batch: usize,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        Self {
            currency: "USD".into(),
            hold_timeout_secs: 900,
            sweep_interval_secs: 60,
            group_commit: true,
            group_commit_max_batch: 1024,
        }
    }
}
