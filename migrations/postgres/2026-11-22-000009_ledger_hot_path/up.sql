-- The ledger's hot path writes fewer index entries per hold and settlement.
-- Keep migrations/sqlite in step (`cargo xtask codegen --check`).

-- Only open holds are indexed: the sweeper's index holds exactly what it
-- looks for, and a hold leaves it once when resolved instead of moving
-- within it. Queries name the status as a literal so the index applies.
-- (SQLite also stores postings without a rowid; PostgreSQL has no rowid tree.)
DROP INDEX ledger_holds_open_idx;
CREATE INDEX ledger_holds_open_idx ON ledger_holds (expires_at) WHERE status = 'held';

-- No index of postings by account: balances live on the accounts, postings
-- are read by entry, and `ledger verify` replays every posting anyway.
DROP INDEX ledger_postings_account_idx;
