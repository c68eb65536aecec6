-- Stripe: each org's customer, saved payment method and auto top-up
-- settings (with the single in-flight top-up claim), and every webhook
-- event received (the ledger's idempotency key on the payment intent is
-- what makes a payment credit once; this table is the record).
CREATE TABLE billing_settings (
    org_id TEXT PRIMARY KEY REFERENCES orgs (id),
    stripe_customer_id TEXT,
    payment_method_id TEXT,
    auto_top_up BOOLEAN NOT NULL,
    threshold BIGINT NOT NULL,
    top_up_amount BIGINT NOT NULL,
    low_balance_alert BIGINT,
    in_flight_since TIMESTAMP,
    in_flight_intent TEXT,
    last_failure TEXT,
    low_balance_alerted_at TIMESTAMP,
    updated_at TIMESTAMP NOT NULL
);

CREATE TABLE stripe_events (
    id TEXT PRIMARY KEY,
    event_type TEXT NOT NULL,
    org_id TEXT,
    outcome TEXT NOT NULL,
    received_at TIMESTAMP NOT NULL
);
