CREATE TABLE ledger_postings_with_rowid (
    entry_id TEXT NOT NULL REFERENCES ledger_entries (id),
    account_id TEXT NOT NULL REFERENCES ledger_accounts (id),
    amount BIGINT NOT NULL,
    PRIMARY KEY (entry_id, account_id)
);
INSERT INTO ledger_postings_with_rowid (entry_id, account_id, amount)
    SELECT entry_id, account_id, amount FROM ledger_postings;
DROP TABLE ledger_postings;
ALTER TABLE ledger_postings_with_rowid RENAME TO ledger_postings;
CREATE INDEX ledger_postings_account_idx ON ledger_postings (account_id);

DROP INDEX ledger_holds_open_idx;
CREATE INDEX ledger_holds_open_idx ON ledger_holds (status, expires_at);
