-- Queries on odin.jobs. Every statement that changes a job's state also writes the matching
-- event, numbered from jobs.last_event_seq while the row is locked.
-- Writes that end or extend an attempt are fenced: they apply only while the job is still
-- running under the same owner and attempt number.

-- name: job_enqueue
-- Insert jobs (parallel arrays, one element per job) with their first event, in input order.
-- A job whose unique key is already taken by a job in one of its unique states is skipped;
-- the caller finds that job with job_find_unique.
WITH input AS (
    SELECT *
    FROM unnest(
        %(kind)s::text[], %(queue)s::text[], %(args)s::jsonb[], %(priority)s::smallint[],
        %(max_attempts)s::integer[], %(timeout_seconds)s::float8[],
        %(scheduled_at)s::timestamptz[], %(unique_key)s::text[], %(unique_states)s::text[],
        %(concurrency_key)s::text[], %(concurrency_limit)s::integer[]
    ) WITH ORDINALITY AS t(
        kind, queue, args, priority, max_attempts, timeout_seconds, scheduled_at,
        unique_key, unique_states, concurrency_key, concurrency_limit, ord
    )
),
inserted AS (
    INSERT INTO odin.jobs (
        kind, queue, args, state, priority, max_attempts, timeout_seconds, scheduled_at,
        last_event_seq, unique_key, unique_states, concurrency_key, concurrency_limit
    )
    SELECT
        kind, queue, args,
        CASE WHEN scheduled_at > now() THEN 'scheduled' ELSE 'queued' END::odin.job_state,
        priority, max_attempts, timeout_seconds, coalesce(scheduled_at, now()), 1,
        unique_key, unique_states::odin.job_state[], concurrency_key, concurrency_limit
    FROM input
    ORDER BY ord
    ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL AND state = ANY (unique_states)
        DO NOTHING
    RETURNING *
),
events AS (
    INSERT INTO odin.job_events (job_id, seq, type, data)
    SELECT id, 1, state::text,
        jsonb_build_object('queue', queue, 'scheduled_at', scheduled_at)
    FROM inserted
)
SELECT * FROM inserted ORDER BY id;

-- name: job_enqueue_one
-- job_enqueue for one job. Scalar parameters let this frequent statement be prepared, and as
-- a single statement it needs no transaction block of its own.
WITH inserted AS (
    INSERT INTO odin.jobs (
        kind, queue, args, state, priority, max_attempts, timeout_seconds, scheduled_at,
        last_event_seq, unique_key, unique_states, concurrency_key, concurrency_limit
    )
    VALUES (
        %(kind)s::text, %(queue)s::text, %(args)s::jsonb,
        CASE WHEN %(scheduled_at)s::timestamptz > now() THEN 'scheduled' ELSE 'queued' END::odin.job_state,
        %(priority)s::smallint, %(max_attempts)s::integer, %(timeout_seconds)s::float8,
        coalesce(%(scheduled_at)s::timestamptz, now()), 1, %(unique_key)s::text,
        %(unique_states)s::text::odin.job_state[], %(concurrency_key)s::text,
        %(concurrency_limit)s::integer
    )
    ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL AND state = ANY (unique_states)
        DO NOTHING
    RETURNING *
),
events AS (
    INSERT INTO odin.job_events (job_id, seq, type, data)
    SELECT id, 1, state::text,
        jsonb_build_object('queue', queue, 'scheduled_at', scheduled_at)
    FROM inserted
)
SELECT * FROM inserted;

-- name: job_find_unique
-- The jobs that currently hold the given unique keys.
SELECT * FROM odin.jobs
WHERE unique_key = ANY(%(unique_keys)s::text[]) AND state = ANY (unique_states);

-- name: job_fetch
-- Claim queued jobs for %(owner)s: up to the given number per queue (parallel arrays) and
-- %(limit)s in all, skipping paused queues and jobs under a concurrency limit.
WITH wanted AS (
    SELECT w.queue, w.room, w.ord
    FROM unnest(%(queues)s::text[], %(rooms)s::integer[]) WITH ORDINALITY AS w(queue, room, ord)
    WHERE w.room > 0
        AND NOT EXISTS (SELECT 1 FROM odin.queues AS q WHERE q.name = w.queue AND q.paused)
),
due AS (
    SELECT d.id
    FROM wanted
    CROSS JOIN LATERAL (
        SELECT id
        FROM odin.jobs
        WHERE state = 'queued' AND queue = wanted.queue AND concurrency_key IS NULL
        ORDER BY priority DESC, scheduled_at, id
        LIMIT wanted.room
        FOR UPDATE SKIP LOCKED
    ) AS d
    LIMIT %(limit)s
),
claimed AS (
    UPDATE odin.jobs AS j
    SET state = 'running',
        attempt = j.attempt + 1,
        owner = %(owner)s,
        attempted_at = now(),
        progress = NULL,
        last_event_seq = j.last_event_seq + 1
    FROM due
    WHERE j.id = due.id
    RETURNING j.*
),
events AS (
    INSERT INTO odin.job_events (job_id, seq, type, data)
    SELECT id, last_event_seq, 'running', jsonb_build_object('attempt', attempt, 'owner', owner)
    FROM claimed
)
SELECT * FROM claimed ORDER BY priority DESC, scheduled_at, id;

-- name: job_lock_limited_keys
-- Take the transaction lock of up to 100 concurrency keys with queued jobs in the given
-- queues, oldest first, skipping keys another claimer holds. Claims of one key are thereby
-- serialised, and the next statement of the transaction sees every committed claim.
SELECT k.concurrency_key
FROM (
    SELECT j.concurrency_key, min(j.scheduled_at) AS first_at
    FROM odin.jobs AS j
    WHERE j.state = 'queued'
        AND j.concurrency_key IS NOT NULL
        AND j.queue = ANY(%(queues)s::text[])
        AND NOT EXISTS (SELECT 1 FROM odin.queues AS q WHERE q.name = j.queue AND q.paused)
    GROUP BY j.concurrency_key
    -- Keys already at their limit are left out here (and counted again, under the lock, by
    -- job_fetch_limited), so they cannot fill the 100 places and starve keys with room.
    HAVING min(j.concurrency_limit) > (
        SELECT count(*) FROM odin.jobs AS r
        WHERE r.state = 'running' AND r.concurrency_key = j.concurrency_key
    )
    ORDER BY first_at
    LIMIT 100
) AS k
WHERE pg_try_advisory_xact_lock(%(lock_class)s, hashtext(k.concurrency_key));

-- name: job_fetch_limited
-- Claim jobs of the locked concurrency keys, as many per key as its limit leaves room for.
WITH keys AS (
    SELECT unnest(%(keys)s::text[]) AS key
),
room AS (
    SELECT keys.key,
        (
            SELECT j.concurrency_limit FROM odin.jobs AS j
            WHERE j.state = 'queued' AND j.concurrency_key = keys.key
            ORDER BY j.priority DESC, j.scheduled_at, j.id
            LIMIT 1
        ) - (
            SELECT count(*) FROM odin.jobs AS r
            WHERE r.state = 'running' AND r.concurrency_key = keys.key
        ) AS free
    FROM keys
),
due AS (
    SELECT d.id
    FROM room
    CROSS JOIN LATERAL (
        SELECT id
        FROM odin.jobs
        WHERE state = 'queued' AND concurrency_key = room.key
            AND queue = ANY(%(queues)s::text[])
            AND NOT EXISTS (SELECT 1 FROM odin.queues AS q WHERE q.name = queue AND q.paused)
        ORDER BY priority DESC, scheduled_at, id
        LIMIT greatest(room.free, 0)
        FOR UPDATE SKIP LOCKED
    ) AS d
    LIMIT %(limit)s
),
claimed AS (
    UPDATE odin.jobs AS j
    SET state = 'running',
        attempt = j.attempt + 1,
        owner = %(owner)s,
        attempted_at = now(),
        progress = NULL,
        last_event_seq = j.last_event_seq + 1
    FROM due
    WHERE j.id = due.id
    RETURNING j.*
),
events AS (
    INSERT INTO odin.job_events (job_id, seq, type, data)
    SELECT id, last_event_seq, 'running', jsonb_build_object('attempt', attempt, 'owner', owner)
    FROM claimed
)
SELECT * FROM claimed ORDER BY priority DESC, scheduled_at, id;

-- name: job_promote_scheduled
-- Move up to %(limit)s scheduled jobs whose time has come to queued.
WITH due AS (
    SELECT id
    FROM odin.jobs
    WHERE state = 'scheduled' AND scheduled_at <= now()
    ORDER BY scheduled_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
),
promoted AS (
    UPDATE odin.jobs AS j
    SET state = 'queued', last_event_seq = j.last_event_seq + 1
    FROM due
    WHERE j.id = due.id
    RETURNING j.id, j.queue, j.last_event_seq
),
events AS (
    INSERT INTO odin.job_events (job_id, seq, type, data)
    SELECT id, last_event_seq, 'queued', jsonb_build_object('queue', queue)
    FROM promoted
)
SELECT count(*) AS promoted FROM promoted;

-- name: job_next_scheduled_at
-- Time at which the earliest scheduled job becomes due, NULL when none is scheduled.
SELECT min(scheduled_at) AS next_at FROM odin.jobs WHERE state = 'scheduled';

-- name: job_record_outcomes
-- End attempts of %(owner)s (parallel arrays, one element per job) and write their events.
-- Returns the events written, exactly as stored in the log. A job with no event here was no
-- longer owned by this attempt.
WITH input AS (
    SELECT *
    FROM unnest(
        %(id)s::bigint[], %(attempt)s::integer[], %(state)s::odin.job_state[],
        %(result)s::jsonb[], %(error)s::jsonb[], %(scheduled_at)s::timestamptz[],
        %(event_type)s::text[], %(event_data)s::jsonb[]
    ) AS t(id, attempt, state, result, error, scheduled_at, event_type, event_data)
),
updated AS (
    UPDATE odin.jobs AS j
    SET state = i.state,
        owner = NULL,
        -- An attempt handed back at shutdown must not use up the job's attempts. Attempt
        -- numbers stay unique (logs and fencing rely on them), so the job gets one more.
        max_attempts = CASE
            WHEN i.event_type = 'interrupted' THEN j.max_attempts + 1 ELSE j.max_attempts
        END,
        result = i.result,
        errors = CASE
            WHEN i.error IS NULL THEN j.errors
            ELSE j.errors || jsonb_build_array(i.error)
        END,
        scheduled_at = coalesce(i.scheduled_at, j.scheduled_at),
        finalized_at = CASE
            WHEN i.state IN ('completed', 'failed', 'cancelled') THEN now()
        END,
        last_event_seq = j.last_event_seq + 1
    FROM input AS i
    WHERE j.id = i.id
        AND j.state = 'running'
        AND j.owner = %(owner)s
        AND j.attempt = i.attempt
    RETURNING j.id, j.last_event_seq, i.event_type, i.event_data
),
events AS (
    INSERT INTO odin.job_events (job_id, seq, type, data)
    SELECT id, last_event_seq, event_type, event_data FROM updated
    RETURNING *
)
SELECT * FROM events;

-- name: job_append_event
-- Write a progress or log event of a running attempt; no row when the attempt is not owned.
WITH owned AS (
    UPDATE odin.jobs
    SET last_event_seq = last_event_seq + 1,
        progress = CASE WHEN %(type)s = 'progress' THEN %(data)s::jsonb ELSE progress END
    WHERE id = %(id)s AND state = 'running' AND owner = %(owner)s AND attempt = %(attempt)s
    RETURNING id, last_event_seq
)
INSERT INTO odin.job_events (job_id, seq, type, data)
SELECT id, last_event_seq, %(type)s, %(data)s::jsonb FROM owned
RETURNING seq;

-- name: job_get
-- One job by id.
SELECT * FROM odin.jobs WHERE id = %(id)s;

-- name: job_list
-- Jobs newest first, filtered by state, kind and queue when given, after the cursor id.
SELECT *
FROM odin.jobs
WHERE (%(state)s::odin.job_state IS NULL OR state = %(state)s::odin.job_state)
    AND (%(kind)s::text IS NULL OR kind = %(kind)s::text)
    AND (%(queue)s::text IS NULL OR queue = %(queue)s::text)
    AND (%(before_id)s::bigint IS NULL OR id < %(before_id)s::bigint)
ORDER BY id DESC
LIMIT %(limit)s;

-- name: job_rescue
-- Hand the running jobs of dead owners back to the queue, or fail them when their attempts
-- are used up. The owners are checked again here, so one that came back is left alone.
WITH candidates AS (
    SELECT unnest(%(owners)s::text[]) AS owner
),
dead AS (
    SELECT c.owner
    FROM candidates AS c
    LEFT JOIN odin.workers AS w ON w.owner = c.owner
    WHERE w.id IS NULL
        OR odin.worker_is_dead(
            w.id, w.heartbeat_at, %(poll_only)s::boolean,
            %(heartbeat_timeout_seconds)s::float8, %(lock_class)s::integer
        )
),
rescued AS (
    UPDATE odin.jobs AS j
    SET state = CASE WHEN j.attempt < j.max_attempts THEN 'queued' ELSE 'failed' END::odin.job_state,
        owner = NULL,
        finalized_at = CASE WHEN j.attempt < j.max_attempts THEN NULL ELSE now() END,
        errors = j.errors || jsonb_build_array(jsonb_build_object(
            'attempt', j.attempt,
            'error', 'worker ' || dead.owner || ' stopped; attempt rescued',
            'at', now()
        )),
        last_event_seq = j.last_event_seq + 1
    FROM dead
    WHERE j.state = 'running' AND j.owner = dead.owner
    RETURNING j.id, j.queue, j.state, j.attempt, j.attempted_at, j.last_event_seq, dead.owner
),
events AS (
    INSERT INTO odin.job_events (job_id, seq, type, data)
    SELECT id, last_event_seq,
        CASE WHEN state = 'queued' THEN 'rescued' ELSE 'failed' END,
        jsonb_build_object(
            'queue', queue, 'attempt', attempt, 'owner', owner, 'reason', 'rescued',
            'error', 'worker ' || owner || ' stopped; attempt rescued'
        )
    FROM rescued
)
SELECT id, state, owner, extract(epoch FROM now() - attempted_at) AS attempt_seconds
FROM rescued;

-- name: job_rescue_overdue
-- End attempts that ran %(grace_seconds)s past their timeout, whatever their owner's health:
-- retried when attempts remain, failed otherwise. Their owner's later writes are refused.
WITH overdue AS (
    SELECT id
    FROM odin.jobs
    WHERE state = 'running'
        AND timeout_seconds IS NOT NULL
        AND attempted_at + make_interval(secs => timeout_seconds + %(grace_seconds)s) < now()
    FOR UPDATE SKIP LOCKED
),
ended AS (
    UPDATE odin.jobs AS j
    SET state = CASE WHEN j.attempt < j.max_attempts THEN 'queued' ELSE 'failed' END::odin.job_state,
        owner = NULL,
        finalized_at = CASE WHEN j.attempt < j.max_attempts THEN NULL ELSE now() END,
        errors = j.errors || jsonb_build_array(jsonb_build_object(
            'attempt', j.attempt,
            'error', 'attempt timed out after ' || j.timeout_seconds || ' seconds',
            'at', now()
        )),
        last_event_seq = j.last_event_seq + 1
    FROM overdue
    WHERE j.id = overdue.id
    RETURNING j.id, j.queue, j.state, j.attempt, j.timeout_seconds, j.last_event_seq
),
events AS (
    INSERT INTO odin.job_events (job_id, seq, type, data)
    SELECT id, last_event_seq,
        CASE WHEN state = 'queued' THEN 'rescued' ELSE 'failed' END,
        jsonb_build_object(
            'queue', queue, 'attempt', attempt, 'reason', 'timeout',
            'error', 'attempt timed out after ' || timeout_seconds || ' seconds'
        )
    FROM ended
)
SELECT id, state FROM ended;

-- name: job_cancel
-- Cancel a job that has not reached a final state, and tell its owner (if running) to stop.
-- The row lock makes a cancel and a completion of the same job end in exactly one state.
WITH cancelled AS (
    UPDATE odin.jobs
    SET state = 'cancelled',
        owner = NULL,
        finalized_at = now(),
        last_event_seq = last_event_seq + 1
    WHERE id = %(id)s AND state IN ('scheduled', 'queued', 'running')
    RETURNING id, last_event_seq
),
events AS (
    INSERT INTO odin.job_events (job_id, seq, type, data)
    SELECT id, last_event_seq, 'cancelled', jsonb_build_object('reason', %(reason)s::text)
    FROM cancelled
),
told AS (
    SELECT pg_notify('odin_cancel', id::text) FROM cancelled
)
SELECT id, (SELECT count(*) FROM told) AS told FROM cancelled;

-- name: job_retry
-- Queue a failed or cancelled job again, with at least one attempt left.
WITH retried AS (
    UPDATE odin.jobs
    SET state = 'queued',
        finalized_at = NULL,
        result = NULL,
        scheduled_at = now(),
        max_attempts = greatest(max_attempts, attempt + 1),
        last_event_seq = last_event_seq + 1
    WHERE id = %(id)s AND state IN ('failed', 'cancelled')
    RETURNING id, queue, last_event_seq
),
events AS (
    INSERT INTO odin.job_events (job_id, seq, type, data)
    SELECT id, last_event_seq, 'queued', jsonb_build_object('queue', queue, 'reason', 'retry requested')
    FROM retried
)
SELECT id FROM retried;

-- name: job_prune
-- Delete up to %(limit)s finished jobs older than their state's retention, with their events.
WITH old AS (
    SELECT id
    FROM odin.jobs
    WHERE (state = 'completed' AND finalized_at < now() - make_interval(secs => %(completed_seconds)s))
        OR (state = 'failed' AND finalized_at < now() - make_interval(secs => %(failed_seconds)s))
        OR (state = 'cancelled' AND finalized_at < now() - make_interval(secs => %(cancelled_seconds)s))
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
),
gone AS (
    DELETE FROM odin.jobs AS j USING old WHERE j.id = old.id RETURNING j.id
),
gone_events AS (
    DELETE FROM odin.job_events AS e USING gone WHERE e.job_id = gone.id
)
SELECT count(*) AS pruned FROM gone;
