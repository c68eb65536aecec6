-- Erasure (the privacy policy's right to erasure): a user's deletion
-- request, cancellable for `[privacy] account_deletion_days`, after which
-- the retention sweep erases the account: the row keeps its id (what the
-- ledger's and the audit log's records point at) and loses everything
-- that identifies a person.
ALTER TABLE users ADD COLUMN deletion_requested_at TIMESTAMP;
ALTER TABLE users ADD COLUMN erased_at TIMESTAMP;
CREATE INDEX users_deletion_idx ON users (deletion_requested_at);
