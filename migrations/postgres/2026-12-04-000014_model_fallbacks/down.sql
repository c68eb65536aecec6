ALTER TABLE org_routing DROP COLUMN fallbacks;
