-- Asynchronous executions: submitted, queued on the job queue, run later,
-- polled or called back.
-- 'sync' (answered in its request) or 'async' (POST /v1/executions).
ALTER TABLE executions ADD COLUMN mode TEXT NOT NULL DEFAULT 'sync';
-- Only asynchronous executions are in it: a request's own execution (the
-- paid path) writes no index entry more than before.
CREATE INDEX executions_async_open ON executions (status, created_at) WHERE mode = 'async';

-- What an asynchronous execution has besides the record every execution
-- has: its input and output content (a data class of its own, with its own
-- retention), its deadline, its webhook, a cancel asked for.
CREATE TABLE async_executions (
    execution_id TEXT PRIMARY KEY REFERENCES executions (id),
    -- The canonical request (chat messages, or a model's `input` object);
    -- NULL once its retention has passed (the execution has ended).
    request TEXT,
    -- It ends unbilled if it has not started by then, and is stopped if it runs past it.
    deadline_at TIMESTAMP NOT NULL,
    -- What it produced: {"text": …} or {"files": [file ids]}.
    output TEXT,
    -- Its own webhook URL and the events it wants (space-separated; empty: all).
    webhook_url TEXT,
    webhook_events TEXT,
    -- When the customer asked to cancel it.
    cancel_requested_at TIMESTAMP,
    -- The last status whose event was emitted (a sweep emits what a stop missed).
    notified_status TEXT
);

-- Idempotency-Key of POST /v1/executions: claimed before admission
-- (execution_id NULL while it is admitted), so a duplicate is answered
-- with the same execution, a 409 while the first is admitted, or a 422
-- when the body differs.
CREATE TABLE execution_idempotency (
    org_id TEXT NOT NULL REFERENCES orgs (id),
    idempotency_key TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    execution_id TEXT REFERENCES executions (id),
    created_at TIMESTAMP NOT NULL,
    PRIMARY KEY (org_id, idempotency_key)
);

-- One attempt of an execution at an asynchronous provider: the provider's
-- id for it, and the hash of the callback token its webhook URL carries.
CREATE TABLE provider_tasks (
    id TEXT PRIMARY KEY,
    execution_id TEXT NOT NULL REFERENCES executions (id),
    provider TEXT NOT NULL,
    route_id TEXT NOT NULL,
    -- SHA-256 of the per-attempt callback token (the token is never stored).
    token_hash TEXT NOT NULL UNIQUE,
    remote_id TEXT,
    -- submitting, submitted, done.
    status TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL
);
CREATE INDEX provider_tasks_execution ON provider_tasks (execution_id);

-- Every provider callback received, verified or not; kept 90 days.
CREATE TABLE provider_callbacks (
    id TEXT PRIMARY KEY,
    received_at TIMESTAMP NOT NULL,
    provider TEXT NOT NULL,
    -- The execution its token named (NULL: no such token).
    execution_id TEXT,
    webhook_id TEXT,
    verified BOOLEAN NOT NULL,
    -- applied, ignored (nothing new), replayed, forged, stale, unknown_token, invalid.
    outcome TEXT NOT NULL,
    payload_sha256 TEXT NOT NULL
);
CREATE INDEX provider_callbacks_replay ON provider_callbacks (provider, webhook_id);
CREATE INDEX provider_callbacks_received ON provider_callbacks (received_at);

-- An endpoint created for executions' own webhook URLs: it receives only
-- the events of the executions that name it, never the org's other events.
ALTER TABLE webhook_endpoints ADD COLUMN per_execution BOOLEAN NOT NULL DEFAULT FALSE;
-- The execution a delivery's event is about (its delivery status).
ALTER TABLE webhook_deliveries ADD COLUMN execution_id TEXT;
CREATE INDEX webhook_deliveries_execution ON webhook_deliveries (execution_id);
