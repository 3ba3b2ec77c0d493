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

-- Claims are HOT updates. A claim writes only `worker`, `lease_until` and `claims`, and no index
-- (nor any index's predicate) reads those columns any more, so PostgreSQL writes the claimed
-- version beside the old one on its page without a new entry in every index (the claim's index
-- keeps one entry per step instead of gaining a dead one per claim). The expired claims the
-- sweep looks for, and the live claims a limited step counts, are found among the ready steps
-- (`jobgraph_steps_ready`, and `jobgraph_steps_ready_by_name` per step). Room on each page for
-- the new versions: `fillfactor`.
DROP INDEX jobgraph_steps_leased;
DROP INDEX jobgraph_steps_claimed;
CREATE INDEX jobgraph_steps_ready_by_name ON jobgraph_steps (job, name)
    WHERE state = 'pending' AND ready_at IS NOT NULL;
ALTER TABLE jobgraph_steps SET (fillfactor = 70);

-- Likewise a run's state changes (pending, running, ended) are HOT: the runs that may expire are
-- those with a time to live, which is cleared when a run ends, instead of those in a state.
DROP INDEX jobgraph_runs_expiring;
UPDATE jobgraph_runs SET expires_at = NULL
WHERE expires_at IS NOT NULL AND state NOT IN ('pending', 'running');
CREATE INDEX jobgraph_runs_expiring ON jobgraph_runs (expires_at)
    WHERE queued AND expires_at IS NOT NULL;
ALTER TABLE jobgraph_runs SET (fillfactor = 70);
