-- Schema version 3 of the PostgreSQL store: a claim reads one index in order. A claim filters
-- and orders ready steps on their own rows: the run's creation order (`seq`), `max_attempts`
-- and `expires_at` are copied onto its steps at submit (as `job` and `priority` already are),
-- so `ORDER BY ... LIMIT n FOR UPDATE SKIP LOCKED` walks `jobgraph_steps_ready` and stops after
-- n rows, instead of joining every ready step to its run and sorting the whole backlog.

ALTER TABLE jobgraph_steps ADD COLUMN run_seq bigint NOT NULL DEFAULT 0;
ALTER TABLE jobgraph_steps ADD COLUMN max_attempts bigint NOT NULL DEFAULT 5
    CHECK (max_attempts > 0);
ALTER TABLE jobgraph_steps ADD COLUMN expires_at timestamptz;

UPDATE jobgraph_steps s
SET run_seq = r.seq, max_attempts = r.max_attempts, expires_at = r.expires_at
FROM jobgraph_runs r
WHERE r.id = s.run_id;

DROP INDEX jobgraph_steps_ready;
-- What a claim scans: the ready steps of one job, in the queue's order.
CREATE INDEX jobgraph_steps_ready ON jobgraph_steps (job, priority DESC, ready_at, run_seq, idx)
    WHERE state = 'pending' AND ready_at IS NOT NULL;
