DROP INDEX users_deletion_idx;
ALTER TABLE users DROP COLUMN erased_at;
ALTER TABLE users DROP COLUMN deletion_requested_at;
