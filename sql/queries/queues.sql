-- Queries on odin.queues: pausing and resuming queues for every replica.

-- name: queue_set_paused
-- Pause or resume a queue; resuming wakes the workers of that queue.
WITH changed AS (
    INSERT INTO odin.queues (name, paused) VALUES (%(queue)s, %(paused)s)
    ON CONFLICT (name) DO UPDATE SET paused = excluded.paused, updated_at = now()
    RETURNING name, paused, updated_at
),
woken AS (
    SELECT pg_notify('odin_jobs', name) FROM changed WHERE NOT paused
)
SELECT name, paused, updated_at, (SELECT count(*) FROM woken) AS woken FROM changed;

-- name: queue_list
-- Every queue that has jobs or a pause record, with its job counts by state.
WITH counts AS (
    SELECT queue, state, count(*) AS n FROM odin.jobs GROUP BY queue, state
),
names AS (
    SELECT queue AS name FROM counts UNION SELECT name FROM odin.queues
)
SELECT names.name,
    coalesce(q.paused, false) AS paused,
    coalesce(
        (SELECT jsonb_object_agg(c.state, c.n) FROM counts AS c WHERE c.queue = names.name),
        '{}'::jsonb
    ) AS counts
FROM names
LEFT JOIN odin.queues AS q ON q.name = names.name
ORDER BY names.name;
