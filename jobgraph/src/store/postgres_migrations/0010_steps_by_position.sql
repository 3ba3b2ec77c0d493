-- Schema version 10 of the PostgreSQL store: the queue finds a step by its position, and only
-- the durable runner's steps have an index by name.
--
-- An update of a step that changes an indexed column (a completion, the readiness of a child)
-- cannot be HOT: it writes an entry in every index of the table whose condition the new row
-- meets. `UNIQUE (run_id, name)` was one of them, and one of the three records each completion
-- wrote (the row, the primary key, the name). The queue knows every step's position (its
-- graph, and each claim, say it), so it reads and writes steps by the primary key alone.
--
-- The durable runner (`Store`) names steps, and its steps are the ones without a job (a queued
-- run's steps have their job, copied for claims): they keep a unique index by name, which the
-- queue's updates never write. Names stay unique in a run either way: each run's steps are
-- inserted from one graph, whose names are unique.
--
-- A fan-out's elements referenced their step by name; they reference it by position.

ALTER TABLE jobgraph_queue_elements DROP CONSTRAINT jobgraph_queue_elements_run_id_step_fkey;
ALTER TABLE jobgraph_queue_elements ADD CONSTRAINT jobgraph_queue_elements_run_id_position_fkey
    FOREIGN KEY (run_id, position)
    REFERENCES jobgraph_steps (run_id, idx) ON DELETE CASCADE;

ALTER TABLE jobgraph_steps DROP CONSTRAINT jobgraph_steps_run_id_name_key;
CREATE UNIQUE INDEX jobgraph_steps_by_name ON jobgraph_steps (run_id, name) WHERE job IS NULL;
