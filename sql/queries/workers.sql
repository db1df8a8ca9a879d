-- Queries on odin.workers and the liveness locks that worker processes hold.
-- A worker holds the session advisory lock (%(lock_class)s, workers.id) on its listener
-- connection for its whole life; pg_locks shows such a lock with objsubid = 2.

-- name: worker_register
-- Record a new worker process and return its id, the second key of its liveness lock.
INSERT INTO odin.workers (owner) VALUES (%(owner)s)
ON CONFLICT (owner) DO UPDATE SET heartbeat_at = now()
RETURNING id;

-- name: worker_lock
-- Take the worker's liveness lock on this session; false when another session has it.
SELECT pg_try_advisory_lock(%(lock_class)s, %(worker_id)s) AS locked;

-- name: worker_lock_reclaim
-- End other sessions that have the worker's liveness lock: stale sessions of this very
-- process, left by a network failure that the server has not noticed yet.
SELECT pg_terminate_backend(l.pid) AS terminated
FROM pg_locks AS l
WHERE l.locktype = 'advisory'
    AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
    AND l.classid = %(lock_class)s::oid
    AND l.objid = %(worker_id)s::oid
    AND l.objsubid = 2
    AND l.granted
    AND l.pid <> pg_backend_pid();

-- name: worker_heartbeat
-- Note that the worker is alive (the liveness signal of poll-only mode).
UPDATE odin.workers SET heartbeat_at = now() WHERE owner = %(owner)s;

-- name: worker_owned_jobs
-- Ids of the jobs that the worker still owns.
SELECT id FROM odin.jobs WHERE state = 'running' AND owner = %(owner)s;

-- name: workers_unresponsive
-- Owners of running jobs that look dead: no liveness lock held (lock mode), or no heartbeat
-- for %(heartbeat_timeout_seconds)s (poll-only mode), or not registered at all.
SELECT DISTINCT j.owner
FROM odin.jobs AS j
LEFT JOIN odin.workers AS w ON w.owner = j.owner
WHERE j.state = 'running'
    AND (
        w.id IS NULL
        OR odin.worker_is_dead(
            w.id, w.heartbeat_at, %(poll_only)s::boolean,
            %(heartbeat_timeout_seconds)s::float8, %(lock_class)s::integer
        )
    );

-- name: leader_try_lock
-- Try to become the leader on this session; also return how long the database has been up.
SELECT pg_try_advisory_lock(%(lock_class)s, 0) AS locked,
    extract(epoch FROM now() - pg_postmaster_start_time())::float8 AS uptime_seconds;

-- name: workers_prune
-- Forget workers that own no running job, hold no liveness lock and went quiet long ago.
DELETE FROM odin.workers AS w
WHERE w.heartbeat_at < now() - make_interval(secs => %(older_than_seconds)s)
    AND NOT EXISTS (SELECT 1 FROM odin.jobs AS j WHERE j.state = 'running' AND j.owner = w.owner)
    AND NOT odin.liveness_lock_held(%(lock_class)s::integer, w.id);
