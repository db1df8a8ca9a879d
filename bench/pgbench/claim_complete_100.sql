-- Batches of 100 jobs: claim the 100 oldest queued jobs in one transaction, then complete
-- all of them in a second one, as a batching worker's fetch and completer do.
WITH due AS (
    SELECT id FROM bench_jobs
    WHERE state = 'queued'
    ORDER BY id
    LIMIT 100
    FOR UPDATE SKIP LOCKED
)
UPDATE bench_jobs AS j SET state = 'running', owner = pg_backend_pid()
FROM due WHERE j.id = due.id;
UPDATE bench_jobs SET state = 'completed', owner = NULL
WHERE state = 'running' AND owner = pg_backend_pid();
