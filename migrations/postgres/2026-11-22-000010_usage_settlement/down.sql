ALTER TABLE executions DROP COLUMN settlement_entry_id;
ALTER TABLE executions DROP COLUMN request_price;
