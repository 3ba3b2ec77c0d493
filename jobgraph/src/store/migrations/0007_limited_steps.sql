-- Schema version 7: steps and fan-out elements know whether their step has limits, and the
-- indexes of ready ones split on it: `jobgraph_steps_ready` and `jobgraph_queue_elements_ready`
-- hold the unlimited, `jobgraph_steps_ready_limited` and `jobgraph_queue_elements_ready_limited`
-- the limited ones, by step (as PostgreSQL's versions 14 and 15).
--
-- A claim read the ready steps of its jobs in one walk of their index, and filtered each row of
-- a limited step against that step's live claims and rate: once a limited step was at its
-- limit, each claim walked past every ready row of it to find the others (20 claims took 187 ms
-- with 6,000 ready steps, and 198 ms with as many ready elements; each holds the store's one
-- write lock meanwhile). Now it reads the unlimited rows from one index and, for each limited
-- step with room, only as many of its rows as that room from the other.
--
-- `limited` is set when a row is inserted (a submit stores its limits before its steps; an
-- element copies its step's), and the submit that creates a limit row marks the step's rows
-- stored before (one writer at a time: nothing is inserted meanwhile). Limit rows are never
-- deleted, so the flag never goes back. Here, the rows stored before this version are marked.
ALTER TABLE jobgraph_steps ADD COLUMN limited INTEGER NOT NULL DEFAULT 0
    CHECK (limited IN (0, 1));
ALTER TABLE jobgraph_queue_elements ADD COLUMN limited INTEGER NOT NULL DEFAULT 0
    CHECK (limited IN (0, 1));
UPDATE jobgraph_steps SET limited = 1
    WHERE EXISTS (SELECT 1 FROM jobgraph_limits l
        WHERE l.job = jobgraph_steps.job AND l.step = jobgraph_steps.name);
UPDATE jobgraph_queue_elements SET limited = 1
    WHERE EXISTS (SELECT 1 FROM jobgraph_limits l
        WHERE l.job = jobgraph_queue_elements.job AND l.step = jobgraph_queue_elements.step);

DROP INDEX jobgraph_steps_ready;
CREATE INDEX jobgraph_steps_ready ON jobgraph_steps (job, priority DESC, ready_at)
    WHERE state = 'pending' AND ready_at IS NOT NULL AND limited = 0;
CREATE INDEX jobgraph_steps_ready_limited ON jobgraph_steps (job, name, priority DESC, ready_at)
    WHERE state = 'pending' AND ready_at IS NOT NULL AND limited = 1;
DROP INDEX jobgraph_queue_elements_ready;
CREATE INDEX jobgraph_queue_elements_ready
    ON jobgraph_queue_elements (job, priority DESC, ready_at, idx)
    WHERE state = 'pending' AND ready_at IS NOT NULL AND limited = 0;
CREATE INDEX jobgraph_queue_elements_ready_limited
    ON jobgraph_queue_elements (job, step, priority DESC, ready_at, idx)
    WHERE state = 'pending' AND ready_at IS NOT NULL AND limited = 1;
