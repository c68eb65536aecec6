-- Usage records, completed: the flat per-request price an execution was
-- billed at (nano-dollars) and the journal entry that settled its hold.
ALTER TABLE executions ADD COLUMN request_price BIGINT;
ALTER TABLE executions ADD COLUMN settlement_entry_id TEXT;
