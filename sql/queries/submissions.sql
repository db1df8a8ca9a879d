-- Idempotent submission and periodic schedules: the records that make a repeated
-- submission or a repeated tick create no second job.

-- name: idempotency_claim
-- Claim an idempotency key for this request; no row when an earlier request holds it.
INSERT INTO odin.idempotency_keys (key, request_hash) VALUES (%(key)s, %(request_hash)s)
ON CONFLICT (key) DO NOTHING
RETURNING key;

-- name: idempotency_bind
-- Record which job the request that claimed the key created.
UPDATE odin.idempotency_keys SET job_id = %(job_id)s WHERE key = %(key)s;

-- name: idempotency_get
-- The request hash and job of a claimed idempotency key.
SELECT request_hash, job_id FROM odin.idempotency_keys WHERE key = %(key)s;

-- name: idempotency_prune
-- Forget idempotency keys older than %(older_than_seconds)s.
DELETE FROM odin.idempotency_keys
WHERE created_at < now() - make_interval(secs => %(older_than_seconds)s);

-- name: periodic_init
-- Start a schedule seen for the first time at its latest past tick, which is not run.
INSERT INTO odin.periodic_ticks (schedule, last_tick) VALUES (%(schedule)s, %(tick)s)
ON CONFLICT (schedule) DO NOTHING;

-- name: periodic_last_tick
-- The last tick a schedule enqueued (or skipped), NULL for an unknown schedule.
SELECT last_tick FROM odin.periodic_ticks WHERE schedule = %(schedule)s;

-- name: periodic_advance
-- Move a schedule to %(tick)s unless it is there already; true when this call moved it.
-- Run in the same transaction as the insert of the tick's job.
UPDATE odin.periodic_ticks
SET last_tick = %(tick)s, updated_at = now()
WHERE schedule = %(schedule)s AND last_tick < %(tick)s
RETURNING schedule;
