-- Files in platform-owned object storage: uploads, and provider outputs
-- re-hosted. The object is written first and its row after it, so a row
-- never points at a missing object; an object a crash left without a row is
-- removed by the orphan sweep. Objects are keyed per org and file id
-- (storage_key), never by a name the customer chose.
CREATE TABLE files (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs (id),
    project_id TEXT REFERENCES projects (id),
    -- 'upload' or 'output'.
    purpose TEXT NOT NULL,
    -- The customer's name for it, for display and Content-Disposition only.
    filename TEXT NOT NULL,
    size_bytes BIGINT NOT NULL,
    declared_type TEXT NOT NULL,
    -- What the first bytes say it is, when they say (NULL: no signature known).
    detected_type TEXT,
    -- Lowercase hex SHA-256 of the content.
    sha256 TEXT NOT NULL,
    storage_key TEXT NOT NULL,
    -- The execution that produced an output.
    execution_id TEXT,
    created_at TIMESTAMP NOT NULL,
    -- NULL: kept until deleted.
    expires_at TIMESTAMP
);
CREATE INDEX files_org_id ON files (org_id, id);
CREATE INDEX files_expires_at ON files (expires_at);
CREATE UNIQUE INDEX files_storage_key ON files (storage_key);

-- Each org's file settings; no row means the configured defaults.
CREATE TABLE org_file_settings (
    org_id TEXT PRIMARY KEY REFERENCES orgs (id),
    upload_ttl_secs BIGINT,
    output_ttl_secs BIGINT,
    quota_bytes BIGINT,
    updated_at TIMESTAMP NOT NULL
);
