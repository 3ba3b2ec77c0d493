-- Schema version 17 of the PostgreSQL store: a step a commit hands over to its worker is
-- written in place (a HOT update), and so is its completion.
--
-- A commit that makes a step ready may claim it for its own worker in the same write (schema
-- version 16's build). That step went into the claims' index all the same (its `ready_at` set),
-- which made the write a non-HOT update: an entry in the claims' index and one in the primary
-- key; and its completion, which takes it out again and changes `state` (a column of every
-- partial index's predicate here), another entry in the primary key. Such a step now keeps
-- `ready_at` NULL, outside the claims' indexes, and no index reads `state`, `worker`,
-- `lease_until`, `claims` or `waiting`: both writes are HOT. In the queue bench's floor on this
-- schema (bare SQL, the 8-step diamond), 65,000 -> 91,000 steps/s and 21.7 -> 15.5 µs of
-- server CPU per step.
--
-- So the indexes of ready steps say "ready" by `ready_at` alone: every write that takes a step
-- out of `pending` clears `ready_at` (here, the rows an older build may have left), and the
-- claims read `state` from the row. The index of failed steps (`redrive --failed`) is over the
-- steps with an error, which every failed step has (a step that failed an attempt and was
-- tried again has one too; the query reads `state`).
--
-- A handed step whose worker stopped answering is in no index a claim reads. The unfinished
-- queued runs of more than one step are (`jobgraph_runs_unfinished`; a run's row is written
-- when it ends, schema version 11 and after), in `seq` order: each claims' sweep (once a second
-- per store) reads the steps of a few hundred of them, going on where the last one stopped, and
-- puts a handed step whose lease ended into the claims' index (`ready_at` at its lease's end),
-- where a claim takes it as any expired claim. A run of one step is left out: its step is
-- never handed over, and its row is not written when it ends.
UPDATE jobgraph_steps SET ready_at = NULL WHERE state <> 'pending' AND ready_at IS NOT NULL;

DROP INDEX jobgraph_steps_ready;
CREATE INDEX jobgraph_steps_ready ON jobgraph_steps (job, priority DESC, ready_at, run_seq, idx)
    WHERE ready_at IS NOT NULL AND NOT limited;
DROP INDEX jobgraph_steps_ready_by_name;
CREATE INDEX jobgraph_steps_ready_by_name
    ON jobgraph_steps (job, name, priority DESC, ready_at, run_seq, idx)
    WHERE ready_at IS NOT NULL AND limited;
DROP INDEX jobgraph_steps_failed;
CREATE INDEX jobgraph_steps_failed ON jobgraph_steps (name) WHERE error IS NOT NULL;

CREATE INDEX jobgraph_runs_unfinished ON jobgraph_runs (seq)
    WHERE queued AND state IN ('pending', 'running') AND jsonb_array_length(graph -> 'steps') > 1;
