-- Usage records: the unit prices an execution was billed at (nano-dollars
-- per million tokens) and the version of the price table they came from;
-- an index for listing an org's usage newest first (ids sort by time).
ALTER TABLE executions ADD COLUMN input_price BIGINT;
ALTER TABLE executions ADD COLUMN output_price BIGINT;
ALTER TABLE executions ADD COLUMN price_version TEXT;
CREATE INDEX executions_org_id_idx ON executions (org_id, id);
