-- OAuth sign-in flows under way: one row per redirect to a provider,
-- holding what the callback must check (state, PKCE verifier, nonce) and
-- where to send the browser after. Used once; dead after ten minutes.
CREATE TABLE oauth_flows (
    state_hash TEXT PRIMARY KEY,
    provider TEXT NOT NULL,
    pkce_verifier TEXT NOT NULL,
    nonce TEXT NOT NULL,
    redirect_to TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL,
    expires_at TIMESTAMP NOT NULL,
    used_at TIMESTAMP
);
