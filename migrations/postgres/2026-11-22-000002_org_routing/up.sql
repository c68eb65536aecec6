-- Each org's routing preferences: the policy that orders routes and the
-- price ceilings (nano-dollars per million tokens) that exclude routes.
-- No row means the defaults (cheapest, no ceiling).
CREATE TABLE org_routing (
    org_id TEXT PRIMARY KEY REFERENCES orgs (id),
    policy TEXT NOT NULL,
    max_input_price BIGINT,
    max_output_price BIGINT,
    updated_at TIMESTAMP NOT NULL
);
