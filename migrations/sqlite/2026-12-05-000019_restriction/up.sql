-- Restriction (the privacy policy's right to restrict processing): an org
-- whose processing is restricted keeps its data and can export it, but no
-- execution runs for it. `restricted_by` is who may lift it: the org
-- itself ('org') or only the operator ('operator': a request that came to
-- the privacy contact, or a dispute).
ALTER TABLE orgs ADD COLUMN restricted_at TIMESTAMP;
ALTER TABLE orgs ADD COLUMN restricted_by TEXT CHECK (restricted_by IN ('org', 'operator'));
ALTER TABLE orgs ADD COLUMN restricted_reason TEXT;
