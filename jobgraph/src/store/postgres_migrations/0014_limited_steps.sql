-- Schema version 14 of the PostgreSQL store: steps know whether their step has limits, and the
-- two indexes of ready steps split on it: `jobgraph_steps_ready` holds the unlimited steps,
-- `jobgraph_steps_ready_by_name` the limited ones.
--
-- The by-name index serves the claims' questions about limited steps (whether one is ready,
-- the first of a step in queue order), but it held every ready step, and making a step ready (a
-- non-HOT update: `ready_at` is a key of the claims' index) wrote an entry into both. That is
-- the one write a step of a graph has that a single-step job does not. Measured in the queue
-- bench (the 8-step diamond, 10,000 runs, alternated with the build before, 8 pairs with 1
-- worker process and 5 with 2): readiness 3.74 -> 2.85 WAL records per step, the server 46.5
-- -> 42.4 and 47.6 -> 44.5 µs of CPU per step, 24.0k -> 26.5k and 30.4k -> 32.0k steps/s
-- (medians; the new build ahead in every pair).
--
-- And a claim that found every limited step of its jobs at its limit (its concurrency held,
-- its rate's bucket empty) walked the claims' index past every ready step of them to find the
-- unlimited ones: 6,000 rows at 6,000 ready, per claim. Now it reads the unlimited steps from
-- one index and, step by step, only the limited steps with room from the other.
--
-- `limited` says whether a limit row of the step's (job, step) exists; a step in neither index
-- is never claimed, so it must be exact. A submit sets it when it inserts its steps, after
-- storing its own limits, under the job's advisory lock in shared mode; the submit that creates
-- a limit row takes that lock exclusively and marks the rows of that step stored before (so a
-- submit running beside it, which could not see the new row, is either waited for and marked,
-- or waits and sees it). Limit rows are never deleted, so the flag never goes back. Here, the
-- rows stored before this version are marked from the limit rows.
ALTER TABLE jobgraph_steps ADD COLUMN limited boolean NOT NULL DEFAULT false;
UPDATE jobgraph_steps s SET limited = true
    FROM jobgraph_limits l
    WHERE l.job = s.job AND l.step = s.name;

DROP INDEX jobgraph_steps_ready;
CREATE INDEX jobgraph_steps_ready ON jobgraph_steps (job, priority DESC, ready_at, run_seq, idx)
    WHERE state = 'pending' AND ready_at IS NOT NULL AND NOT limited;
DROP INDEX jobgraph_steps_ready_by_name;
CREATE INDEX jobgraph_steps_ready_by_name
    ON jobgraph_steps (job, name, priority DESC, ready_at, run_seq, idx)
    WHERE state = 'pending' AND ready_at IS NOT NULL AND limited;
