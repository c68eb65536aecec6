DROP INDEX execution_idempotency_created_idx;
DROP INDEX sessions_last_seen_idx;
DROP INDEX sessions_expires_idx;
DROP INDEX audit_events_created_idx;
DROP TRIGGER audit_events_no_update;
DROP TRIGGER audit_events_no_delete;
CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit_events is append-only');
END;
CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit_events is append-only');
END;
DROP TABLE audit_guard;
