-- Queries behind GET /v1/stats, which the web console polls for its queue overview.

-- name: queue_stats
-- Job counts per queue and state, one row per pair that has jobs.
SELECT queue, state::text AS state, count(*) AS jobs
FROM odin.jobs
GROUP BY queue, state
ORDER BY queue, state;

-- name: queue_throughput
-- Completed and failed jobs per minute over the last %(minutes)s minutes, oldest first, with
-- a row for every minute (the current one included, though it is not over yet). Each state
-- is a range scan of jobs_finalized_idx (state, finalized_at).
WITH minutes AS (
    SELECT generate_series(
        date_trunc('minute', now()) - make_interval(mins => %(minutes)s - 1),
        date_trunc('minute', now()),
        interval '1 minute'
    ) AS minute
),
finished AS (
    SELECT date_trunc('minute', finalized_at) AS minute,
        count(*) FILTER (WHERE state = 'completed') AS completed,
        count(*) FILTER (WHERE state = 'failed') AS failed
    FROM odin.jobs
    WHERE state IN ('completed', 'failed')
        AND finalized_at >= date_trunc('minute', now()) - make_interval(mins => %(minutes)s - 1)
    GROUP BY 1
)
SELECT minutes.minute,
    coalesce(finished.completed, 0) AS completed,
    coalesce(finished.failed, 0) AS failed
FROM minutes
LEFT JOIN finished USING (minute)
ORDER BY minutes.minute;
