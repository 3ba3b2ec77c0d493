-- Schema version 3: the elements of a queued run's `for_each` steps are claimed one by one, so
-- one fan-out spreads over the workers. A fan-out step (`fan_over`: the position of the parent
-- it iterates) is never claimed itself: when its last dependency completes, one row per element
-- of that parent's output is inserted in `jobgraph_queue_elements`, each claimed, leased,
-- fenced, retried and settled like a step; completing the last one stores the step's output
-- (the elements' outputs, in order) and makes its children ready, in that transaction.

-- The position of the parent whose output a `for_each` step runs over; NULL: not a fan-out (or
-- a run submitted without fan-outs, claimed whole).
ALTER TABLE jobgraph_steps ADD COLUMN fan_over INTEGER CHECK (fan_over >= 0);
-- `for_each(.., concurrency = n)`: at most n of the run's elements ready or claimed at once.
ALTER TABLE jobgraph_steps ADD COLUMN fan_bound INTEGER CHECK (fan_bound > 0);
-- A fan-out's elements, once inserted, and how many completed: the last completion completes
-- the step, and with a bound each completion makes element `fan_bound + fan_done - 1` ready,
-- without reading the other elements.
ALTER TABLE jobgraph_steps ADD COLUMN fan_size INTEGER CHECK (fan_size >= 0);
ALTER TABLE jobgraph_steps ADD COLUMN fan_done INTEGER NOT NULL DEFAULT 0 CHECK (fan_done >= 0);

CREATE TABLE jobgraph_queue_elements (
    run_id      TEXT    NOT NULL,
    -- The fan-out step, by name and position.
    step        TEXT    NOT NULL,
    position    INTEGER NOT NULL,
    -- The element's index in the parent's output.
    idx         INTEGER NOT NULL CHECK (idx >= 0),
    -- The parent's position, and the element itself (JSON, cut from the parent's output once,
    -- at insertion): an element's claim carries it, not the parent's whole output.
    over        INTEGER NOT NULL,
    input       TEXT    NOT NULL,
    -- Copied from the step: what claims filter and order on.
    job         TEXT    NOT NULL,
    priority    INTEGER NOT NULL DEFAULT 0,
    state       TEXT    NOT NULL
        CHECK (state IN ('pending', 'completed', 'failed', 'cancelled')),
    -- When the pending element may be claimed; NULL while the step's bound holds it back.
    ready_at    INTEGER,
    -- As on `jobgraph_steps`: the claim number (the fence), the errors returned, the lease.
    claims      INTEGER NOT NULL DEFAULT 0 CHECK (claims >= 0),
    fails       INTEGER NOT NULL DEFAULT 0 CHECK (fails >= 0),
    worker      TEXT,
    lease_until INTEGER,
    output      TEXT,
    error       TEXT,
    started_at  INTEGER,
    ended_at    INTEGER,
    PRIMARY KEY (run_id, step, idx),
    FOREIGN KEY (run_id, step) REFERENCES jobgraph_steps (run_id, name) ON DELETE CASCADE
) STRICT;

-- What a claim scans: the ready elements of one job, in the queue's order.
CREATE INDEX jobgraph_queue_elements_ready ON jobgraph_queue_elements (job, priority DESC, ready_at)
    WHERE state = 'pending' AND ready_at IS NOT NULL;
-- Counting a limited step's live claims, and the sweep of expired ones.
CREATE INDEX jobgraph_queue_elements_claimed ON jobgraph_queue_elements (job, step)
    WHERE state = 'pending' AND worker IS NOT NULL;
