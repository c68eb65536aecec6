-- PostgreSQL notifies other processes of new jobs here. SQLite is one
-- process: its workers are woken in memory, and this migration keeps the two
-- backends' migration lists in step.
SELECT 1;
