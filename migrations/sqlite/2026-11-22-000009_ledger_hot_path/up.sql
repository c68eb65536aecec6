-- The ledger's hot path writes fewer index entries per hold and settlement.
-- Keep migrations/postgres in step (`cargo xtask codegen --check`).

-- Only open holds are indexed: the sweeper's index holds exactly what it
-- looks for, and a hold leaves it once when resolved instead of moving
-- within it. Queries name the status as a literal so the index applies.
DROP INDEX ledger_holds_open_idx;
CREATE INDEX ledger_holds_open_idx ON ledger_holds (expires_at) WHERE status = 'held';

-- Postings are stored in their primary key's order (entry, account), with no
-- separate rowid tree: one B-tree fewer per posting. Nothing refers to them.
-- (DROP TABLE drops the old account index with it.)
CREATE TABLE ledger_postings_by_key (
    entry_id TEXT NOT NULL REFERENCES ledger_entries (id),
    account_id TEXT NOT NULL REFERENCES ledger_accounts (id),
    amount BIGINT NOT NULL,
    PRIMARY KEY (entry_id, account_id)
) WITHOUT ROWID;
INSERT INTO ledger_postings_by_key (entry_id, account_id, amount)
    SELECT entry_id, account_id, amount FROM ledger_postings;
DROP TABLE ledger_postings;
ALTER TABLE ledger_postings_by_key RENAME TO ledger_postings;
-- No index by account: balances live on the accounts, postings are read by
-- entry, and `ledger verify` replays every posting anyway (one scan).
