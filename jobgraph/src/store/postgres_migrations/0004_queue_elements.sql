-- Schema version 4 of the PostgreSQL store: the elements of a queued run's `for_each` steps are
-- claimed one by one, so one fan-out spreads over the workers; the design of SQLite's version 3
-- (`../migrations/0003_queue_elements.sql`) in PostgreSQL's types. A fan-out step (`fan_over`:
-- the position of the parent it iterates) is never claimed itself: when its last dependency
-- completes, one row per element of that parent's output is inserted in
-- `jobgraph_queue_elements`, each claimed (`FOR UPDATE SKIP LOCKED`, from its own ready index
-- in the claim's one statement), leased, fenced, retried and settled like a step; completing
-- the last one stores the step's output (the elements' outputs, in order) and makes its
-- children ready, in that transaction, under the run's lock.

-- The position of the parent whose output a `for_each` step runs over; NULL: not a fan-out (or
-- a run submitted without fan-outs, claimed whole).
ALTER TABLE jobgraph_steps ADD COLUMN fan_over integer CHECK (fan_over >= 0);
-- `for_each(.., concurrency = n)`: at most n of the run's elements ready or claimed at once.
ALTER TABLE jobgraph_steps ADD COLUMN fan_bound bigint CHECK (fan_bound > 0);
-- A fan-out's elements, once inserted, and how many completed: the last completion completes
-- the step, and with a bound the completions make the next elements ready by index, without
-- reading the other elements.
ALTER TABLE jobgraph_steps ADD COLUMN fan_size bigint CHECK (fan_size >= 0);
ALTER TABLE jobgraph_steps ADD COLUMN fan_done bigint NOT NULL DEFAULT 0 CHECK (fan_done >= 0);

CREATE TABLE jobgraph_queue_elements (
    run_id       text        NOT NULL,
    -- The fan-out step, by name and position.
    step         text        NOT NULL,
    position     integer     NOT NULL,
    -- The element's index in the parent's output.
    idx          bigint      NOT NULL CHECK (idx >= 0),
    -- The parent's position, and the element itself (JSON, cut from the parent's output once,
    -- at insertion): an element's claim carries it, not the parent's whole output.
    over         integer     NOT NULL,
    input        text        NOT NULL,
    -- Copied from the step: what claims filter and order on (as on `jobgraph_steps`).
    job          text        NOT NULL,
    priority     integer     NOT NULL DEFAULT 0,
    run_seq      bigint      NOT NULL DEFAULT 0,
    max_attempts bigint      NOT NULL DEFAULT 5 CHECK (max_attempts > 0),
    expires_at   timestamptz,
    state        text        NOT NULL
        CHECK (state IN ('pending', 'completed', 'failed', 'cancelled')),
    -- When the pending element may be claimed; NULL while the step's bound holds it back.
    ready_at     timestamptz,
    -- As on `jobgraph_steps`: the claim number (the fence), the errors returned, the lease.
    claims       bigint      NOT NULL DEFAULT 0 CHECK (claims >= 0),
    fails        bigint      NOT NULL DEFAULT 0 CHECK (fails >= 0),
    worker       text,
    lease_until  timestamptz,
    output       text,
    error        text,
    started_at   timestamptz,
    ended_at     timestamptz,
    PRIMARY KEY (run_id, step, idx),
    FOREIGN KEY (run_id, step) REFERENCES jobgraph_steps (run_id, name) ON DELETE CASCADE
) WITH (fillfactor = 70);

-- What a claim scans: the ready elements of one job, in the queue's order. As on the steps, no
-- index reads a claim's columns (`worker`, `lease_until`, `claims`): claims are HOT updates.
CREATE INDEX jobgraph_queue_elements_ready ON jobgraph_queue_elements
    (job, priority DESC, ready_at, run_seq, position, idx)
    WHERE state = 'pending' AND ready_at IS NOT NULL;
-- Counting a limited step's live element claims.
CREATE INDEX jobgraph_queue_elements_ready_by_name ON jobgraph_queue_elements (job, step)
    WHERE state = 'pending' AND ready_at IS NOT NULL;
