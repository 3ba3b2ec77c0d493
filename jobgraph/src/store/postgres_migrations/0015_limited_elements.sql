-- Schema version 15 of the PostgreSQL store: fan-out elements know whether their step has
-- limits, and the two indexes of ready elements split on it, as the steps' did in version 14:
-- `jobgraph_queue_elements_ready` holds the unlimited elements, and
-- `jobgraph_queue_elements_ready_by_name` the limited ones.
--
-- A claim that found every limited fan-out of its jobs at its limit walked the claims' index of
-- elements past every ready element of them to find the unlimited ones: each claim read as
-- many rows as the fan-outs had elements waiting. Now it reads the unlimited elements from one
-- index and, step by step, only the limited elements with room from the other.
--
-- An element is inserted when its fan-out becomes ready (its last dependency completed, in a
-- worker's commit), with its step row's `limited`. That is exact without a lock of its own: the
-- commit locked the run first and then the fan-out's row, and the submit that creates a limit
-- row locks the job's runs (in id order, as every writer of several runs) before it marks their
-- steps and elements; so the two run one after the other, and whichever runs second sees the
-- first's writes. Here, the rows stored before this version are marked from the limit rows.
ALTER TABLE jobgraph_queue_elements ADD COLUMN limited boolean NOT NULL DEFAULT false;
UPDATE jobgraph_queue_elements e SET limited = true
    FROM jobgraph_limits l
    WHERE l.job = e.job AND l.step = e.step;

DROP INDEX jobgraph_queue_elements_ready;
CREATE INDEX jobgraph_queue_elements_ready ON jobgraph_queue_elements
    (job, priority DESC, ready_at, run_seq, position, idx)
    WHERE state = 'pending' AND ready_at IS NOT NULL AND NOT limited;
DROP INDEX jobgraph_queue_elements_ready_by_name;
CREATE INDEX jobgraph_queue_elements_ready_by_name
    ON jobgraph_queue_elements (job, step, priority DESC, ready_at, run_seq, position, idx)
    WHERE state = 'pending' AND ready_at IS NOT NULL AND limited;
