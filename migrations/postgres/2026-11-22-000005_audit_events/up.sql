-- The audit log: append-only records of authentication and administrative
-- events — who (an API key, or the operator CLI), in which org, what, on
-- what, when, from where (IP, user agent) and under which request id.
CREATE TABLE audit_events (
    id TEXT PRIMARY KEY,
    org_id TEXT REFERENCES orgs (id),
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT,
    ip TEXT,
    user_agent TEXT,
    request_id TEXT,
    details TEXT,
    created_at TIMESTAMP NOT NULL
);
CREATE INDEX audit_events_org_idx ON audit_events (org_id, id);

-- Append-only, enforced by the database itself.
CREATE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_events is append-only';
END;
$$;
CREATE TRIGGER audit_events_no_update BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();
