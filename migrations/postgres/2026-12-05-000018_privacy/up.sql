-- Privacy and retention (docs/PRIVACY.md).
--
-- The audit log stays append-only for everyone but the privacy crate's
-- guarded path: inside one transaction it writes the guard row (a cutoff,
-- or an actor to pseudonymise), makes its change, and deletes the row. The
-- guard is visible to that transaction alone, so the triggers let exactly
-- its change through: deleting rows recorded before the cutoff, or
-- replacing one actor with a pseudonym (clearing addresses, user agents and
-- details) while an event's id, org, action, request and time stay.
CREATE TABLE audit_guard (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    purge_before TIMESTAMP,
    pseudonymise_actor TEXT,
    pseudonym TEXT
);

CREATE OR REPLACE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    g audit_guard%ROWTYPE;
BEGIN
    SELECT * INTO g FROM audit_guard WHERE id = 1;
    IF TG_OP = 'DELETE' THEN
        IF g.purge_before IS NOT NULL AND OLD.created_at < g.purge_before THEN
            RETURN OLD;
        END IF;
    ELSIF g.pseudonymise_actor IS NOT NULL
        AND (OLD.actor = g.pseudonymise_actor OR OLD.target = g.pseudonymise_actor)
        AND NEW.actor = (CASE WHEN OLD.actor = g.pseudonymise_actor THEN g.pseudonym ELSE OLD.actor END)
        AND NEW.target IS NOT DISTINCT FROM
            (CASE WHEN OLD.target = g.pseudonymise_actor THEN g.pseudonym ELSE OLD.target END)
        AND NEW.id = OLD.id
        AND NEW.org_id IS NOT DISTINCT FROM OLD.org_id
        AND NEW.action = OLD.action
        AND NEW.request_id IS NOT DISTINCT FROM OLD.request_id
        AND NEW.created_at = OLD.created_at THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'audit_events is append-only';
END;
$$;

-- Retention sweeps look rows up by their moment.
CREATE INDEX audit_events_created_idx ON audit_events (created_at);
CREATE INDEX sessions_expires_idx ON sessions (expires_at);
CREATE INDEX sessions_last_seen_idx ON sessions (last_seen_at);
CREATE INDEX execution_idempotency_created_idx ON execution_idempotency (created_at);
