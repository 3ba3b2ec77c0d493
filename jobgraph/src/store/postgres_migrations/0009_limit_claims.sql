-- Schema version 9 of the PostgreSQL store: what a claim of a limited step reads is bounded
-- by the step's claims, not its backlog.
--
-- A claim of a step with a concurrency limit counts the step's live claims under the lock of
-- its `jobgraph_limits` row. No index reads a claim's columns (claims are HOT updates), so the
-- count read every ready step of that step to find the claimed ones: with 61,000 ready, 87 ms
-- for each claim and completion of 4 steps, against 5 ms with 1,000, and the claims of one
-- limited step are serialized by that row. Now every claim of a limited step (of a step, or of
-- an element of its fan-out) also writes a row here, under the same lock, and the count reads
-- these rows and each one's step or element by its key: a claim still held (the step pending,
-- claimed, by that claim) whose lease is live counts; one that can no longer be held (ended,
-- put back, taken over, its run deleted) is deleted by the count. An expired claim that was
-- not taken over may still be renewed by its worker's heartbeat: it is kept, and not counted,
-- as before.

CREATE TABLE jobgraph_limit_claims (
    job      text    NOT NULL,
    step     text    NOT NULL,
    run_id   text    NOT NULL,
    -- The step's position, and the element's index (-1: the step itself).
    position integer NOT NULL,
    element  bigint  NOT NULL,
    -- The claim's number (the step's or element's `claims` when it was taken).
    claims   bigint  NOT NULL,
    PRIMARY KEY (job, step, run_id, position, element)
);

-- The claims held now of the steps that have limits.
INSERT INTO jobgraph_limit_claims (job, step, run_id, position, element, claims)
SELECT s.job, s.name, s.run_id, s.idx, -1, s.claims
FROM jobgraph_steps s
JOIN jobgraph_limits l ON l.job = s.job AND l.step = s.name
WHERE s.state = 'pending' AND s.worker IS NOT NULL
UNION ALL
SELECT e.job, e.step, e.run_id, e.position, e.idx, e.claims
FROM jobgraph_queue_elements e
JOIN jobgraph_limits l ON l.job = e.job AND l.step = e.step
WHERE e.state = 'pending' AND e.worker IS NOT NULL;

-- Whether a limited step has a ready step is asked of its own queue order: the first ready
-- step of it in the claims' order (priority, ready time, the run's creation, the position).
-- The counting indexes of version 7 held the steps by name only; asked `EXISTS`, with the
-- statistics of a fresh backlog (every step ready), the planner read the table from its start
-- instead, past every finished step. Keyed in that order, the index gives it, and the plan
-- walks the index whatever the statistics say. The predicate still names the step
-- (`name IS NOT NULL`, `step IS NOT NULL`), so a claim of any step never walks these.
DROP INDEX jobgraph_steps_ready_by_name;
CREATE INDEX jobgraph_steps_ready_by_name
    ON jobgraph_steps (job, name, priority DESC, ready_at, run_seq, idx)
    WHERE state = 'pending' AND ready_at IS NOT NULL AND name IS NOT NULL;
DROP INDEX jobgraph_queue_elements_ready_by_name;
CREATE INDEX jobgraph_queue_elements_ready_by_name
    ON jobgraph_queue_elements (job, step, priority DESC, ready_at, run_seq, position, idx)
    WHERE state = 'pending' AND ready_at IS NOT NULL AND step IS NOT NULL;
