-- The ledger's hot path in one round trip on PostgreSQL: a hold and a
-- resolution (settle, release, expire) are each one function call, run as
-- one statement (so one transaction and one commit). The same steps as the
-- Rust path that SQLite uses (crates/ledger/src/sql.rs): accounts locked in
-- id order, the customer debit guarded (balance >= amount), the entry and
-- its postings written, the hold row written or claimed.

-- Places a hold. Returns ('placed', available after), ('insufficient',
-- available now) or ('exists', NULL) when a hold with the idempotency key
-- is already there (the caller reads it and compares).
CREATE FUNCTION ledger_hold(
    p_hold_id TEXT, p_entry_id TEXT, p_org_id TEXT, p_available TEXT, p_held TEXT, p_amount BIGINT,
    p_reference TEXT, p_idempotency_key TEXT, p_now TIMESTAMP, p_expires_at TIMESTAMP,
    OUT outcome TEXT, OUT available BIGINT
) LANGUAGE plpgsql AS $$
DECLARE
    n INTEGER;
BEGIN
    IF p_idempotency_key IS NOT NULL
        AND EXISTS (SELECT 1 FROM ledger_holds WHERE idempotency_key = p_idempotency_key) THEN
        outcome := 'exists';
        RETURN;
    END IF;
    PERFORM 1 FROM ledger_accounts WHERE id IN (p_available, p_held) ORDER BY id FOR UPDATE;
    UPDATE ledger_accounts SET balance = balance - p_amount, updated_at = p_now
        WHERE id = p_available AND balance >= p_amount
        RETURNING balance INTO available;
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n <> 1 THEN
        outcome := 'insufficient';
        SELECT balance INTO available FROM ledger_accounts WHERE id = p_available;
        RETURN;
    END IF;
    UPDATE ledger_accounts SET balance = balance + p_amount, updated_at = p_now WHERE id = p_held;
    INSERT INTO ledger_entries (id, kind, org_id, hold_id, idempotency_key, memo, created_at)
        VALUES (p_entry_id, 'hold', p_org_id, p_hold_id, NULL, p_reference, p_now);
    INSERT INTO ledger_postings (entry_id, account_id, amount)
        VALUES (p_entry_id, p_available, -p_amount), (p_entry_id, p_held, p_amount);
    INSERT INTO ledger_holds (id, org_id, amount, status, reference, idempotency_key, hold_entry_id,
                              resolve_entry_id, settled_amount, created_at, expires_at, resolved_at)
        VALUES (p_hold_id, p_org_id, p_amount, 'held', p_reference, p_idempotency_key, p_entry_id,
                NULL, NULL, p_now, p_expires_at, NULL);
    outcome := 'placed';
END;
$$;

-- Resolves a hold exactly once: charges LEAST(p_requested, amount) to
-- revenue (settled) or nothing (released, expired) and returns the rest to
-- available, in one entry. Returns the hold's status afterwards, its
-- amount, what was charged, and whether this call resolved it; NULL
-- status when there is no such hold.
CREATE FUNCTION ledger_resolve(
    p_hold_id TEXT, p_status TEXT, p_requested BIGINT, p_entry_id TEXT, p_revenue TEXT, p_now TIMESTAMP,
    OUT status TEXT, OUT amount BIGINT, OUT charged BIGINT, OUT resolved_now BOOLEAN
) LANGUAGE plpgsql AS $$
DECLARE
    h ledger_holds%ROWTYPE;
    v_available TEXT;
    v_held TEXT;
    v_overage BIGINT;
    v_memo TEXT;
BEGIN
    resolved_now := FALSE;
    SELECT * INTO h FROM ledger_holds WHERE id = p_hold_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    amount := h.amount;
    IF h.status <> 'held' THEN
        status := h.status;
        charged := COALESCE(h.settled_amount, 0);
        RETURN;
    END IF;
    charged := LEAST(COALESCE(p_requested, 0), h.amount);
    v_overage := GREATEST(COALESCE(p_requested, 0) - h.amount, 0);
    SELECT id INTO v_available FROM ledger_accounts WHERE code = 'org:' || h.org_id || ':available';
    SELECT id INTO v_held FROM ledger_accounts WHERE code = 'org:' || h.org_id || ':held';
    PERFORM 1 FROM ledger_accounts WHERE id IN (v_available, v_held, p_revenue) ORDER BY id FOR UPDATE;
    UPDATE ledger_accounts SET balance = balance - h.amount, updated_at = p_now
        WHERE id = v_held AND balance >= h.amount;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'ledger: held balance below hold %', p_hold_id;
    END IF;
    IF charged > 0 THEN
        UPDATE ledger_accounts SET balance = balance + charged, updated_at = p_now WHERE id = p_revenue;
    END IF;
    IF h.amount - charged > 0 THEN
        UPDATE ledger_accounts SET balance = balance + (h.amount - charged), updated_at = p_now WHERE id = v_available;
    END IF;
    v_memo := CASE WHEN v_overage > 0
        THEN p_status || ' overage ' || v_overage || ' nano-USD not charged' ELSE p_status END;
    INSERT INTO ledger_entries (id, kind, org_id, hold_id, idempotency_key, memo, created_at)
        VALUES (p_entry_id, p_status, h.org_id, h.id, NULL, v_memo, p_now);
    INSERT INTO ledger_postings (entry_id, account_id, amount)
        SELECT p_entry_id, a, x FROM (VALUES (v_held, -h.amount), (p_revenue, charged),
                                             (v_available, h.amount - charged)) AS v (a, x)
        WHERE x <> 0;
    UPDATE ledger_holds SET status = p_status,
                            settled_amount = CASE WHEN p_status = 'settled' THEN charged END,
                            resolved_at = p_now, resolve_entry_id = p_entry_id
        WHERE id = h.id;
    status := p_status;
    resolved_now := TRUE;
END;
$$;
