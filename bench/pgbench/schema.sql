-- The smallest job table a claim-and-complete queue needs, for the pgbench ceiling.
-- bench.compare fills it with queued rows before each pgbench run.
DROP TABLE IF EXISTS bench_jobs;
CREATE TABLE bench_jobs (
    id    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    state text NOT NULL,
    -- Backend PID of the session holding the claim; NULL unless running.
    owner integer,
    args  jsonb NOT NULL DEFAULT '{}'
);
-- Claims walk this index in id order and stop after LIMIT rows, as Odin's fetch walks
-- jobs_fetch_idx. A plain ORDER BY id would let the planner walk the primary key instead,
-- past every row already claimed.
CREATE INDEX bench_jobs_queued_idx ON bench_jobs (id) WHERE state = 'queued';
CREATE INDEX bench_jobs_running_idx ON bench_jobs (owner) WHERE state = 'running';
