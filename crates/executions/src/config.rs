//! The `[executions]` section: asynchronous executions' limits.

use serde::{Deserialize, Serialize};

/// Settings of asynchronous executions (`POST /v1/executions`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ExecutionsConfig {
    /// The deadline of a submission that names none.
    pub default_deadline_secs: u64,
    /// The longest deadline a submission may ask for.
    pub max_deadline_secs: u64,
    /// The longest `Prefer: wait=N`.
    pub max_wait_secs: u64,
    /// The public root providers call back
    /// (`{callback_url}/v1/callbacks/{provider}/{token}`); unset: `[identity] public_url`.
    pub callback_url: Option<String>,
    /// How often asynchronous executions a stop may have orphaned are looked for.
    pub orphan_sweep_secs: u64,
}

impl Default for ExecutionsConfig {
    fn default() -> Self {
        Self {
            default_deadline_secs: 3_600,
            max_deadline_secs: 86_400,
            max_wait_secs: 60,
            callback_url: None,
            orphan_sweep_secs: 30,
        }
    }
}
