-- Queries on odin.job_events, the per-job event log that streams are read from.

-- name: events_after
-- Events of one job after sequence number %(after)s, oldest first.
SELECT job_id, seq, type, data, created_at
FROM odin.job_events
WHERE job_id = %(job_id)s AND seq > %(after)s
ORDER BY seq
LIMIT %(limit)s;

-- name: events_after_many
-- Events of several jobs, each after its own sequence number (parallel arrays).
SELECT e.job_id, e.seq, e.type, e.data, e.created_at
FROM unnest(%(job_id)s::bigint[], %(after)s::integer[]) AS t(job_id, after)
JOIN odin.job_events AS e ON e.job_id = t.job_id AND e.seq > t.after
ORDER BY e.job_id, e.seq;
