use serde::{Deserialize, Serialize};

/// The `[ledger]` section.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LedgerConfig {
    /// The ledger's currency (ISO 4217). Amounts are in its nano-units.
    pub currency: String,
    /// A hold that is neither resolved nor renewed within this many seconds
    /// is released by the sweeper. The executor renews the holds of the
    /// executions it runs every third of it, so this bounds how long the
    /// money of an execution whose server died stays held, not how long an
    /// execution may run.
    pub hold_timeout_secs: u64,
    /// How often the server's sweeper looks for expired holds.
    pub sweep_interval_secs: u64,
    /// SQLite: put holds and settlements that arrive together in one
    /// transaction of the data layer's shared writer (group commit; its
    /// batch size is `[database] sqlite_writer_max_batch`). Off: one
    /// transaction each. PostgreSQL always runs each as its own
    /// one-statement transaction.
    pub group_commit: bool,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        Self { currency: "USD".into(), hold_timeout_secs: 120, sweep_interval_secs: 60, group_commit: true }
    }
}
