-- Schema version 14 of the PostgreSQL store: `jobgraph_steps_ready_by_name` holds only the steps
-- that have limits.
--
-- The index serves the claims' questions about limited steps (whether one is ready, the first
-- of it in queue order), but it held every ready step, and making a step ready (a non-HOT
-- update: `ready_at` is a key of the claims' index) wrote an entry into it. That is the one write
-- a step of a graph has that a single-step job does not. Measured in the queue bench (the
-- 8-step diamond, 10,000 runs, alternated with the build before, 8 pairs with 1 worker process
-- and 5 with 2): readiness 3.74 -> 2.85 WAL records per step, the server 46.5 -> 42.4 and 47.6
-- -> 44.5 µs of CPU per step, 24.0k -> 26.5k and 30.4k -> 32.0k steps/s (medians; the new
-- build ahead in every pair).
--
-- `limited` says whether a limit row of the step's (job, step) exists. A submit sets it when it
-- inserts its steps, after storing its own limits, under the job's advisory lock in shared mode;
-- the submit that creates a limit row takes that lock exclusively and marks the rows of that
-- step stored before (so a submit running beside it, which could not see the new row, is
-- either waited for and marked, or waits and sees it). Limit rows are never deleted, so the
-- flag never goes back.
--
-- Rows stored before this version, and rows a build before it inserts, default to `true`: in
-- the index as before, at its old cost. The flag only narrows what the index holds, and a claim
-- still reads `jobgraph_limits` for whether a step is limited; a row marked `true` without a
-- limit is only an index entry too many.
ALTER TABLE jobgraph_steps ADD COLUMN limited boolean NOT NULL DEFAULT true;

DROP INDEX jobgraph_steps_ready_by_name;
CREATE INDEX jobgraph_steps_ready_by_name
    ON jobgraph_steps (job, name, priority DESC, ready_at, run_seq, idx)
    WHERE state = 'pending' AND ready_at IS NOT NULL AND limited;
