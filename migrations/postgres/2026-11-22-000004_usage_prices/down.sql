DROP INDEX executions_org_id_idx;
ALTER TABLE executions DROP COLUMN price_version;
ALTER TABLE executions DROP COLUMN output_price;
ALTER TABLE executions DROP COLUMN input_price;
