ALTER TABLE api_keys ADD COLUMN previous_secret_hmac TEXT;
ALTER TABLE api_keys ADD COLUMN previous_valid_until TIMESTAMP;
ALTER TABLE api_keys DROP COLUMN previous_secrets;
