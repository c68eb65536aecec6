CREATE INDEX ledger_postings_account_idx ON ledger_postings (account_id);
DROP INDEX ledger_holds_open_idx;
CREATE INDEX ledger_holds_open_idx ON ledger_holds (status, expires_at);
