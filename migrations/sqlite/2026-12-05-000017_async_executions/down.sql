DROP INDEX webhook_deliveries_execution;
ALTER TABLE webhook_deliveries DROP COLUMN execution_id;
ALTER TABLE webhook_endpoints DROP COLUMN per_execution;
DROP TABLE provider_callbacks;
DROP TABLE provider_tasks;
DROP TABLE execution_idempotency;
DROP TABLE async_executions;
DROP INDEX executions_async_open;
ALTER TABLE executions DROP COLUMN mode;
