-- Claiming a job and finishing it are the two most frequent writes. Neither can be a HOT
-- update, because they change indexed columns (state, owner), so each adds an entry to every
-- index whose condition the new row version meets. The two indexes below serve listings and
-- counts; from now on they leave running jobs out, so a claim no longer writes to them. Running
-- jobs are few (at most the workers' total concurrency) and jobs_running_owner_idx finds them.
-- In a drain of no-op jobs this raised throughput by about a tenth.

DROP INDEX odin.jobs_state_kind_idx;
CREATE INDEX jobs_state_kind_idx ON odin.jobs (state, kind, id) WHERE state <> 'running';

DROP INDEX odin.jobs_queue_idx;
CREATE INDEX jobs_queue_idx ON odin.jobs (queue, id) WHERE state <> 'running';
