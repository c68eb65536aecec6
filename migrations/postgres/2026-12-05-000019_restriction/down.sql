ALTER TABLE orgs DROP COLUMN restricted_reason;
ALTER TABLE orgs DROP COLUMN restricted_by;
ALTER TABLE orgs DROP COLUMN restricted_at;
