-- A new job wakes idle workers in every process: each insert statement
-- notifies `modelroute_jobs` once per queue it added to (delivered at commit,
-- so a rolled-back job wakes nobody). Workers LISTEN on it and poll only as a
-- fallback.
CREATE FUNCTION jobs_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('modelroute_jobs', q.queue) FROM (SELECT DISTINCT queue FROM new_jobs) AS q;
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_notify AFTER INSERT ON jobs
    REFERENCING NEW TABLE AS new_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION jobs_notify();
