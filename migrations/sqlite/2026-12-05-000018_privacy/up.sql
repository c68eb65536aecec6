-- Privacy and retention (docs/PRIVACY.md).
--
-- The audit log stays append-only for everyone but the privacy crate's
-- guarded path: inside one transaction it writes the guard row (a cutoff,
-- or an actor to pseudonymise), makes its change, and deletes the row.
-- SQLite has one writer, so no other transaction ever sees the guard set:
-- the triggers let exactly its change through, deleting rows recorded
-- before the cutoff, or replacing one actor with a pseudonym (clearing
-- addresses, user agents and details) while an event's id, org, action,
-- request and time stay.
CREATE TABLE audit_guard (
    id INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
    purge_before TIMESTAMP,
    pseudonymise_actor TEXT,
    pseudonym TEXT
);

DROP TRIGGER audit_events_no_update;
DROP TRIGGER audit_events_no_delete;
CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
WHEN NOT EXISTS (
    SELECT 1 FROM audit_guard WHERE purge_before IS NOT NULL AND OLD.created_at < purge_before
)
BEGIN
    SELECT RAISE(ABORT, 'audit_events is append-only');
END;
CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
WHEN NOT EXISTS (
    SELECT 1 FROM audit_guard AS g
    WHERE g.pseudonymise_actor IS NOT NULL
      AND (OLD.actor = g.pseudonymise_actor OR OLD.target IS g.pseudonymise_actor)
      AND NEW.actor = CASE WHEN OLD.actor = g.pseudonymise_actor THEN g.pseudonym ELSE OLD.actor END
      AND NEW.target IS CASE WHEN OLD.target IS g.pseudonymise_actor THEN g.pseudonym ELSE OLD.target END
      AND NEW.id = OLD.id
      AND NEW.org_id IS OLD.org_id
      AND NEW.action = OLD.action
      AND NEW.request_id IS OLD.request_id
      AND NEW.created_at = OLD.created_at
)
BEGIN
    SELECT RAISE(ABORT, 'audit_events is append-only');
END;

-- Retention sweeps look rows up by their moment.
CREATE INDEX audit_events_created_idx ON audit_events (created_at);
CREATE INDEX sessions_expires_idx ON sessions (expires_at);
CREATE INDEX sessions_last_seen_idx ON sessions (last_seen_at);
CREATE INDEX execution_idempotency_created_idx ON execution_idempotency (created_at);
