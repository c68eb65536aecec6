-- Per model, the models an org falls back to when it cannot serve (a JSON
-- object: slug -> [slug, ...]); NULL: none.
ALTER TABLE org_routing ADD COLUMN fallbacks TEXT;
