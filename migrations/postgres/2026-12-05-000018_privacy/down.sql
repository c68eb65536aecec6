DROP INDEX execution_idempotency_created_idx;
DROP INDEX sessions_last_seen_idx;
DROP INDEX sessions_expires_idx;
DROP INDEX audit_events_created_idx;
CREATE OR REPLACE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_events is append-only';
END;
$$;
DROP TABLE audit_guard;
