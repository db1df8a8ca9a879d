-- The liveness test of a worker, written once for every query that needs it (finding dead
-- workers, rescuing their jobs, pruning worker records).

-- Whether the session advisory lock (lock_class, worker_id) is held in this database. Such a
-- two-key lock shows in pg_locks with the keys in classid and objid, and objsubid = 2.
CREATE FUNCTION odin.liveness_lock_held(lock_class integer, worker_id integer)
RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (
        SELECT 1
        FROM pg_locks AS l
        WHERE l.locktype = 'advisory'
            AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
            AND l.classid = lock_class::oid
            AND l.objid = worker_id::oid
            AND l.objsubid = 2
            AND l.granted
    )
$$;

-- Whether a registered worker is dead: its liveness lock is free, or, in poll-only mode
-- (where session locks cannot be trusted), its heartbeat is older than the timeout.
CREATE FUNCTION odin.worker_is_dead(
    worker_id integer,
    heartbeat_at timestamptz,
    poll_only boolean,
    heartbeat_timeout_seconds double precision,
    lock_class integer
)
RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT CASE
        WHEN poll_only
            THEN heartbeat_at < now() - make_interval(secs => heartbeat_timeout_seconds)
        ELSE NOT odin.liveness_lock_held(lock_class, worker_id)
    END
$$;
