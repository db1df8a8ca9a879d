-- One job per transaction: claim the oldest queued job, then complete it. Each statement
-- commits on its own, as a worker's claim and its completion do.
WITH due AS (
    SELECT id FROM bench_jobs
    WHERE state = 'queued'
    ORDER BY id
    LIMIT 1
    FOR UPDATE SKIP LOCKED
)
UPDATE bench_jobs AS j SET state = 'running', owner = pg_backend_pid()
FROM due WHERE j.id = due.id;
UPDATE bench_jobs SET state = 'completed', owner = NULL
WHERE state = 'running' AND owner = pg_backend_pid();
