use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::WorkerConfig;

/// The `[jobs]` section.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobsConfig {
    /// Run workers inside `modelroute serve` (the embedded default, where
    /// SQLite is one process). Off: only `modelroute worker` processes run
    /// jobs (PostgreSQL, workers scaled apart from the API replicas).
    pub run_in_server: bool,
    /// The queues and how many of each queue's jobs run at once per process.
    pub queues: BTreeMap<String, usize>,
    /// A claim's lease; a running job renews it every third of it, and a
    /// dead worker's job runs again this long after its last renewal.
    pub lease_secs: u64,
    /// How often a worker looks for work nothing woke it for (another
    /// process's enqueue, a retry come due), reaps lapsed leases and ticks
    /// the periodic jobs.
    pub poll_ms: u64,
    /// The first retry's backoff ceiling, doubled each attempt (full jitter).
    pub backoff_base_ms: u64,
    /// The backoff's largest ceiling.
    pub backoff_max_secs: u64,
    /// On shutdown, running jobs get this long before their leases are handed back.
    pub shutdown_timeout_secs: u64,
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            run_in_server: true,
            queues: BTreeMap::from([
                ("default".to_owned(), 8),
                ("mail".to_owned(), 2),
                ("webhooks".to_owned(), 8),
                // Asynchronous executions: a chat holds its slot while it streams.
                ("executions".to_owned(), 32),
            ]),
            lease_secs: 30,
            poll_ms: 1000,
            backoff_base_ms: 1000,
            backoff_max_secs: 3600,
            shutdown_timeout_secs: 30,
        }
    }
}

impl JobsConfig {
    /// The workers' settings, named `name`, with no periodic jobs yet.
    #[must_use]
    pub fn worker(&self, name: &str) -> WorkerConfig {
        WorkerConfig {
            name: name.to_owned(),
            queues: self.queues.iter().map(|(q, n)| (q.clone(), *n)).collect(),
            lease: Duration::from_secs(self.lease_secs.max(1)),
            poll: Duration::from_millis(self.poll_ms.max(10)),
            backoff_base: Duration::from_millis(self.backoff_base_ms),
            backoff_max: Duration::from_secs(self.backoff_max_secs),
            shutdown_timeout: Duration::from_secs(self.shutdown_timeout_secs),
            periodics: Vec::new(),
        }
    }
}
