DROP TRIGGER jobs_notify ON jobs;
DROP FUNCTION jobs_notify();
