DROP TABLE stripe_events;
DROP TABLE billing_settings;
