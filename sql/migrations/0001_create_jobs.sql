-- Jobs and their append-only event log. The event log is what clients stream: every state
-- change writes its event in the same transaction, so the log and the job never disagree.

CREATE SCHEMA IF NOT EXISTS odin;

CREATE TYPE odin.job_state AS ENUM (
    'scheduled',  -- waiting for scheduled_at (delayed submission or retry backoff)
    'queued',     -- due, waiting for a worker
    'running',    -- claimed by the worker named in owner
    'completed',  -- final: the job returned a result
    'failed',     -- final: the last attempt failed, or the job asked not to be retried
    'cancelled'   -- final: cancelled before it could finish
);

CREATE TABLE odin.jobs (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind            text NOT NULL CHECK (length(kind) BETWEEN 1 AND 200),
    queue           text NOT NULL CHECK (length(queue) BETWEEN 1 AND 128),
    args            jsonb NOT NULL DEFAULT '{}',
    state           odin.job_state NOT NULL,
    priority        smallint NOT NULL DEFAULT 0 CHECK (priority BETWEEN -100 AND 100),
    attempt         integer NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    max_attempts    integer NOT NULL CHECK (max_attempts >= 1),
    timeout_seconds double precision CHECK (timeout_seconds > 0),
    -- Identity of the worker process that holds the running attempt; NULL unless running.
    owner           text,
    result          jsonb,
    -- One entry per failed attempt: {"attempt", "error", "at"}.
    errors          jsonb NOT NULL DEFAULT '[]',
    -- Last progress report of the running attempt: {"fraction", "message"}.
    progress        jsonb,
    -- Sequence number of the job's latest event. Events take their number from this counter
    -- while they hold the job's row lock, so a job's events commit in sequence order.
    last_event_seq  integer NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    scheduled_at    timestamptz NOT NULL DEFAULT now(),
    attempted_at    timestamptz,
    finalized_at    timestamptz,
    CHECK ((state = 'running') = (owner IS NOT NULL)),
    CHECK ((state IN ('completed', 'failed', 'cancelled')) = (finalized_at IS NOT NULL))
);

-- The fetch query walks this index in claim order and stops after LIMIT rows.
CREATE INDEX jobs_fetch_idx ON odin.jobs (queue, priority DESC, scheduled_at, id)
    WHERE state = 'queued';
-- Scheduled jobs are promoted to queued when due; only due rows are read.
CREATE INDEX jobs_scheduled_idx ON odin.jobs (scheduled_at) WHERE state = 'scheduled';
CREATE INDEX jobs_running_owner_idx ON odin.jobs (owner) WHERE state = 'running';
CREATE INDEX jobs_state_kind_idx ON odin.jobs (state, kind, id);
CREATE INDEX jobs_queue_idx ON odin.jobs (queue, id);
-- The pruner deletes finished jobs by age.
CREATE INDEX jobs_finalized_idx ON odin.jobs (state, finalized_at) WHERE finalized_at IS NOT NULL;

-- Worker processes. Each holds the session advisory lock (WORKER_LOCK_CLASS, id) for as long
-- as it lives, so a free lock means a dead process. Ids come from a sequence and are never
-- reused, so a restarted process cannot be taken for the one that died.
CREATE TABLE odin.workers (
    id          integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    owner       text NOT NULL UNIQUE,
    started_at  timestamptz NOT NULL DEFAULT now(),
    -- Updated periodically by the worker; the only liveness signal in poll-only mode.
    heartbeat_at timestamptz NOT NULL DEFAULT now()
);

-- No foreign key to jobs: events are written on the hot path of every job, and the job row
-- is always locked by the writer anyway. Pruning deletes a job's events with the job.
CREATE TABLE odin.job_events (
    job_id     bigint NOT NULL,
    seq        integer NOT NULL CHECK (seq >= 1),
    type       text NOT NULL,
    data       jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, seq)
);

-- One NOTIFY per statement that writes events, carrying "job_id:seq" pairs (the highest
-- sequence number per job), split to stay under NOTIFY's 8000-byte payload limit. Listeners
-- read the events themselves from the table. Every path that makes a job due writes a
-- "queued", "rescued" or "interrupted" event naming its queue, so the same trigger wakes the
-- workers of that queue.
CREATE FUNCTION odin.notify_job_events() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    payload text := '';
    item text;
BEGIN
    FOR item IN
        SELECT DISTINCT data->>'queue' FROM new_events
        WHERE type IN ('queued', 'rescued', 'interrupted')
    LOOP
        PERFORM pg_notify('odin_jobs', item);
    END LOOP;
    FOR item IN
        SELECT job_id::text || ':' || max(seq)::text FROM new_events GROUP BY job_id
    LOOP
        IF length(payload) + length(item) > 7900 THEN
            PERFORM pg_notify('odin_events', payload);
            payload := '';
        END IF;
        payload := CASE WHEN payload = '' THEN item ELSE payload || ',' || item END;
    END LOOP;
    IF payload <> '' THEN
        PERFORM pg_notify('odin_events', payload);
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER job_events_notify
    AFTER INSERT ON odin.job_events
    REFERENCING NEW TABLE AS new_events
    FOR EACH STATEMENT EXECUTE FUNCTION odin.notify_job_events();
