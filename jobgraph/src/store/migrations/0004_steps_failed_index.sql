-- Schema version 4: the index that redrive reads (every run of a job where a step failed) holds
-- failed steps only, as PostgreSQL's does. Over `(name, state)` it held every step, so each
-- step's checkpoint (pending to completed) moved the step's entry in it: a delete and an insert
-- in one more B-tree per write, and more pages per commit.

DROP INDEX jobgraph_steps_by_name_state;
CREATE INDEX jobgraph_steps_failed ON jobgraph_steps (name) WHERE state = 'failed';
