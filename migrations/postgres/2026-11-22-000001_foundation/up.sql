-- Foundation schema: tenants, API keys, the double-entry ledger, executions.
-- Ids are prefixed text (org_…, exec_…); timestamps are UTC without zone;
-- money is BIGINT nano-dollars. Keep migrations/sqlite in step with this file:
-- `cargo xtask codegen --check` fails when the two disagree.

CREATE TABLE orgs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL
);

CREATE TABLE projects (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs (id),
    name TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL
);
CREATE INDEX projects_org_idx ON projects (org_id);

CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs (id),
    project_id TEXT NOT NULL REFERENCES projects (id),
    name TEXT NOT NULL,
    public_id TEXT NOT NULL UNIQUE,
    secret_hmac TEXT NOT NULL,
    scopes TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL,
    expires_at TIMESTAMP,
    revoked_at TIMESTAMP,
    last_used_at TIMESTAMP
);
CREATE INDEX api_keys_project_idx ON api_keys (project_id);

CREATE TABLE ledger_accounts (
    id TEXT PRIMARY KEY,
    code TEXT NOT NULL UNIQUE,
    org_id TEXT REFERENCES orgs (id),
    kind TEXT NOT NULL,
    currency TEXT NOT NULL,
    balance BIGINT NOT NULL,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL
);

CREATE TABLE ledger_entries (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    org_id TEXT REFERENCES orgs (id),
    hold_id TEXT,
    idempotency_key TEXT UNIQUE,
    memo TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL
);
CREATE INDEX ledger_entries_org_idx ON ledger_entries (org_id, created_at);

CREATE TABLE ledger_postings (
    entry_id TEXT NOT NULL REFERENCES ledger_entries (id),
    account_id TEXT NOT NULL REFERENCES ledger_accounts (id),
    amount BIGINT NOT NULL,
    PRIMARY KEY (entry_id, account_id)
);
CREATE INDEX ledger_postings_account_idx ON ledger_postings (account_id);

CREATE TABLE ledger_holds (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs (id),
    amount BIGINT NOT NULL,
    status TEXT NOT NULL,
    reference TEXT NOT NULL,
    idempotency_key TEXT UNIQUE,
    hold_entry_id TEXT NOT NULL REFERENCES ledger_entries (id),
    resolve_entry_id TEXT REFERENCES ledger_entries (id),
    settled_amount BIGINT,
    created_at TIMESTAMP NOT NULL,
    expires_at TIMESTAMP NOT NULL,
    resolved_at TIMESTAMP
);
CREATE INDEX ledger_holds_open_idx ON ledger_holds (status, expires_at);

CREATE TABLE executions (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs (id),
    project_id TEXT NOT NULL REFERENCES projects (id),
    api_key_id TEXT NOT NULL REFERENCES api_keys (id),
    model TEXT NOT NULL,
    route_id TEXT,
    status TEXT NOT NULL,
    stream BOOLEAN NOT NULL,
    hold_id TEXT REFERENCES ledger_holds (id),
    hold_amount BIGINT NOT NULL,
    cost BIGINT,
    input_tokens BIGINT,
    output_tokens BIGINT,
    finish_reason TEXT,
    error_code TEXT,
    error_message TEXT,
    decision TEXT,
    created_at TIMESTAMP NOT NULL,
    started_at TIMESTAMP,
    finished_at TIMESTAMP
);
CREATE INDEX executions_org_idx ON executions (org_id, created_at);
