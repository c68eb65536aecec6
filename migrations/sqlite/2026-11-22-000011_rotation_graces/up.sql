-- Every rotation's grace stands: a key keeps each earlier secret that is
-- still within its grace, as a JSON array of {"hmac", "until"} (was one
-- previous secret, which a second rotation overwrote).
ALTER TABLE api_keys ADD COLUMN previous_secrets TEXT NOT NULL DEFAULT '[]';
UPDATE api_keys
SET previous_secrets = json_array(json_object('hmac', previous_secret_hmac, 'until', replace(previous_valid_until, ' ', 'T')))
WHERE previous_secret_hmac IS NOT NULL AND previous_valid_until IS NOT NULL;
ALTER TABLE api_keys DROP COLUMN previous_valid_until;
ALTER TABLE api_keys DROP COLUMN previous_secret_hmac;
