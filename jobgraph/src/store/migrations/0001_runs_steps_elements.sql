-- Schema version 1: runs, their steps, and the completed elements of `for_each` steps.
-- The distributed store (PostgreSQL) extends these tables, so one `status` reads both.
-- Timestamps are Unix milliseconds; inputs, outputs and the graph are JSON text.

CREATE TABLE jobgraph_runs (
    id          TEXT    NOT NULL PRIMARY KEY,
    job         TEXT    NOT NULL,
    batch       TEXT,
    input       TEXT    NOT NULL,
    graph       TEXT    NOT NULL,
    state       TEXT    NOT NULL
        CHECK (state IN ('pending', 'running', 'succeeded', 'failed', 'cancelled')),
    error       TEXT,
    -- The runner executing the run, and until when (fencing: every write checks the owner).
    lease_owner TEXT,
    lease_until INTEGER,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
) STRICT;

CREATE INDEX jobgraph_runs_by_created ON jobgraph_runs (created_at);
CREATE INDEX jobgraph_runs_by_job ON jobgraph_runs (job, created_at);
CREATE INDEX jobgraph_runs_by_batch ON jobgraph_runs (batch, created_at) WHERE batch IS NOT NULL;

CREATE TABLE jobgraph_steps (
    run_id     TEXT    NOT NULL REFERENCES jobgraph_runs (id) ON DELETE CASCADE,
    name       TEXT    NOT NULL,
    -- The step's index in the run's graph: steps are listed in graph order.
    position   INTEGER NOT NULL,
    state      TEXT    NOT NULL
        CHECK (state IN ('pending', 'completed', 'failed', 'skipped', 'cancelled')),
    attempts   INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    output     TEXT,
    error      TEXT,
    started_at INTEGER,
    ended_at   INTEGER,
    PRIMARY KEY (run_id, name)
) STRICT;

-- Redrive of every run where a step failed.
CREATE INDEX jobgraph_steps_by_name_state ON jobgraph_steps (name, state);

CREATE TABLE jobgraph_elements (
    run_id TEXT    NOT NULL,
    step   TEXT    NOT NULL,
    idx    INTEGER NOT NULL CHECK (idx >= 0),
    output TEXT    NOT NULL,
    PRIMARY KEY (run_id, step, idx),
    FOREIGN KEY (run_id, step) REFERENCES jobgraph_steps (run_id, name) ON DELETE CASCADE
) STRICT;
