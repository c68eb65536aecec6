DROP TABLE job_schedules;
DROP TABLE jobs;
