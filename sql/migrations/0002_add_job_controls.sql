-- Queue pausing, unique jobs, idempotent submission, periodic schedules and per-key
-- concurrency limits. Each is enforced by the database itself, so it holds across replicas.

-- Paused queues are skipped by every replica's fetch until resumed.
CREATE TABLE odin.queues (
    name       text PRIMARY KEY,
    paused     boolean NOT NULL DEFAULT false,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Unique jobs: at most one job per unique_key among the jobs whose state is one of
-- unique_states. The partial unique index makes concurrent duplicate submissions wait for
-- each other and then conflict, whichever replica they reach.
ALTER TABLE odin.jobs
    ADD COLUMN unique_key text,
    ADD COLUMN unique_states odin.job_state[],
    ADD COLUMN concurrency_key text,
    ADD COLUMN concurrency_limit integer CHECK (concurrency_limit >= 1),
    ADD CHECK ((concurrency_key IS NULL) = (concurrency_limit IS NULL)),
    ADD CHECK ((unique_key IS NULL) = (unique_states IS NULL));

CREATE UNIQUE INDEX jobs_unique_key_idx ON odin.jobs (unique_key)
    WHERE unique_key IS NOT NULL AND state = ANY (unique_states);

-- Jobs under a concurrency limit are claimed by a separate fetch that counts, per key, the
-- jobs already running; the plain fetch only walks jobs without a key.
DROP INDEX odin.jobs_fetch_idx;
CREATE INDEX jobs_fetch_idx ON odin.jobs (queue, priority DESC, scheduled_at, id)
    WHERE state = 'queued' AND concurrency_key IS NULL;
CREATE INDEX jobs_fetch_limited_idx
    ON odin.jobs (concurrency_key, priority DESC, scheduled_at, id)
    WHERE state = 'queued' AND concurrency_key IS NOT NULL;
CREATE INDEX jobs_running_key_idx ON odin.jobs (concurrency_key)
    WHERE state = 'running' AND concurrency_key IS NOT NULL;

-- Idempotency-Key of POST /v1/jobs: the first request with a key creates the job, later
-- ones with the same key get that job back. request_hash tells a repeat from a misuse.
CREATE TABLE odin.idempotency_keys (
    key          text PRIMARY KEY CHECK (length(key) BETWEEN 1 AND 255),
    request_hash text NOT NULL,
    job_id       bigint,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX idempotency_keys_created_idx ON odin.idempotency_keys (created_at);

-- Periodic schedules: the last tick each schedule enqueued. The leader advances it and
-- inserts the tick's job in one statement, so each tick runs once across leader changes.
CREATE TABLE odin.periodic_ticks (
    schedule   text PRIMARY KEY,
    last_tick  timestamptz NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Wake idle workers when a job is scheduled, so they can sleep until exactly its time.
CREATE OR REPLACE FUNCTION odin.notify_job_events() RETURNS trigger
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
    IF EXISTS (SELECT 1 FROM new_events WHERE type IN ('scheduled', 'retry_scheduled')) THEN
        PERFORM pg_notify('odin_schedule', '');
    END IF;
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
