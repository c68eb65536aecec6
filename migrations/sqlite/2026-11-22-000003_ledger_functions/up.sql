-- PostgreSQL gets the ledger's hot path as server-side functions (one round
-- trip each). SQLite runs in-process, where a round trip is a function call:
-- it keeps the Rust path. This migration keeps the two folders in step.
SELECT 1;
