-- The durable job queue (crates/jobs). A job is pending until a worker
-- claims it (running, under a lease the worker renews), then deleted when it
-- succeeds, or retried with backoff, or dead after its last attempt (kept
-- for operators to read and retry).
CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    queue TEXT NOT NULL,
    payload TEXT NOT NULL,
    unique_key TEXT,
    status TEXT NOT NULL,
    priority INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    max_attempts INTEGER NOT NULL,
    run_at TIMESTAMP NOT NULL,
    lease_until TIMESTAMP,
    worker TEXT,
    last_error TEXT,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL
);
-- What workers claim: pending jobs by queue, priority and time.
CREATE INDEX jobs_ready_idx ON jobs (queue, priority DESC, run_at) WHERE status = 'pending';
-- Running jobs whose lease lapsed (their worker died).
CREATE INDEX jobs_leases_idx ON jobs (lease_until) WHERE status = 'running';
-- At most one pending or running job per kind and key.
CREATE UNIQUE INDEX jobs_unique_idx ON jobs (kind, unique_key)
    WHERE unique_key IS NOT NULL AND status IN ('pending', 'running');

-- Periodic jobs: the next period of each; whoever moves it on enqueues the
-- period's job, so it runs once per period however many replicas ask.
CREATE TABLE job_schedules (
    name TEXT PRIMARY KEY,
    next_run_at TIMESTAMP NOT NULL
);
