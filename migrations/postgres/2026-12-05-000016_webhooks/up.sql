-- Org webhook endpoints: where events are delivered, signed with the
-- endpoint's secret (Standard Webhooks). The secret is stored sealed
-- (AES-256-GCM under a key derived from the server secret) and shown once.
CREATE TABLE webhook_endpoints (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs (id),
    url TEXT NOT NULL,
    description TEXT NOT NULL,
    -- Space-separated event types; empty: every event.
    event_types TEXT NOT NULL,
    enabled BOOLEAN NOT NULL,
    -- Why it was disabled, when the platform disabled it (410, failing too long).
    disabled_reason TEXT,
    secret_sealed TEXT NOT NULL,
    -- The secret before the last rotation, still signing until it expires.
    previous_secret_sealed TEXT,
    previous_secret_expires_at TIMESTAMP,
    -- Since when every delivery has failed (NULL: the last one succeeded).
    failing_since TIMESTAMP,
    -- When the org was told it keeps failing (once per failing period).
    alerted_at TIMESTAMP,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL
);
CREATE INDEX webhook_endpoints_org ON webhook_endpoints (org_id, id);

-- One event to one endpoint, attempted on a schedule until delivered.
CREATE TABLE webhook_deliveries (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs (id),
    endpoint_id TEXT NOT NULL REFERENCES webhook_endpoints (id),
    -- The webhook-id header: the same for every attempt of this delivery.
    event_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    payload TEXT NOT NULL,
    -- pending, delivered, failed (the schedule ran out, or the endpoint is gone or disabled).
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    next_attempt_at TIMESTAMP,
    last_status INTEGER,
    last_error TEXT,
    created_at TIMESTAMP NOT NULL,
    delivered_at TIMESTAMP
);
CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (endpoint_id, id);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (status, next_attempt_at);

-- Every attempt: when, what came back, how long it took.
CREATE TABLE webhook_attempts (
    id TEXT PRIMARY KEY,
    delivery_id TEXT NOT NULL REFERENCES webhook_deliveries (id),
    attempted_at TIMESTAMP NOT NULL,
    status_code INTEGER,
    latency_ms BIGINT NOT NULL,
    -- The first KiB of the answer.
    response_excerpt TEXT,
    error TEXT
);
CREATE INDEX webhook_attempts_delivery ON webhook_attempts (delivery_id, attempted_at);
