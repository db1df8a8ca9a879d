-- Queries on odin.queues: pausing and resuming queues for every replica.

-- name: queue_pause
-- Pause a queue for every replica.
INSERT INTO odin.queues (name, paused) VALUES (%(queue)s, true)
ON CONFLICT (name) DO UPDATE SET paused = true, updated_at = now()
RETURNING name, paused;

-- name: queue_resume
-- Resume a queue: forget its pause record (so resuming an unknown name leaves nothing
-- behind) and wake the workers of that queue.
WITH forgotten AS (
    DELETE FROM odin.queues WHERE name = %(queue)s
),
woken AS (
    SELECT pg_notify('odin_jobs', %(queue)s::text)
)
SELECT %(queue)s::text AS name, false AS paused, (SELECT count(*) FROM woken) AS woken;

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
