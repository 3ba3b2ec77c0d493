-- Schema version 2: the queue. A run submitted by a client (`queued = 1`) is executed one step
-- at a time by workers: each step that is ready is claimed under a lease, fenced by its claim
-- number, and completing it makes its children ready in the same transaction.

ALTER TABLE jobgraph_runs ADD COLUMN queued INTEGER NOT NULL DEFAULT 0 CHECK (queued IN (0, 1));
-- A duplicate submit with the same key returns the first run (unique per job).
ALTER TABLE jobgraph_runs ADD COLUMN idem_key TEXT;
-- Higher first.
ALTER TABLE jobgraph_runs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
-- The run fails when it has not ended by then (its time to live).
ALTER TABLE jobgraph_runs ADD COLUMN expires_at INTEGER;
-- How many claims of one step may expire (its worker died or stalled) before the step fails.
ALTER TABLE jobgraph_runs ADD COLUMN max_attempts INTEGER NOT NULL DEFAULT 5 CHECK (max_attempts > 0);
-- How many times one step may return an error before it fails for good (NULL: its retry
-- policy alone decides).
ALTER TABLE jobgraph_runs ADD COLUMN max_fails INTEGER CHECK (max_fails > 0);
-- Submitted held (Alya's waitabit): no step is ready until the batch is released.
ALTER TABLE jobgraph_runs ADD COLUMN held INTEGER NOT NULL DEFAULT 0 CHECK (held IN (0, 1));

CREATE UNIQUE INDEX jobgraph_runs_by_key ON jobgraph_runs (job, idem_key)
    WHERE idem_key IS NOT NULL;
CREATE INDEX jobgraph_runs_expiring ON jobgraph_runs (expires_at)
    WHERE queued = 1 AND expires_at IS NOT NULL;

-- The job, copied from the run: claims filter on it without a join.
ALTER TABLE jobgraph_steps ADD COLUMN job TEXT;
-- How many of the step's dependencies (parents and `after`) have not completed.
ALTER TABLE jobgraph_steps ADD COLUMN waiting INTEGER NOT NULL DEFAULT 0 CHECK (waiting >= 0);
-- Queued runs: when the pending step may be claimed; NULL while it waits for dependencies.
ALTER TABLE jobgraph_steps ADD COLUMN ready_at INTEGER;
-- The run's priority, copied: the claim's order.
ALTER TABLE jobgraph_steps ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
-- How many times the step was claimed: the fence of each claim.
ALTER TABLE jobgraph_steps ADD COLUMN claims INTEGER NOT NULL DEFAULT 0 CHECK (claims >= 0);
-- How many of its claims returned an error.
ALTER TABLE jobgraph_steps ADD COLUMN fails INTEGER NOT NULL DEFAULT 0 CHECK (fails >= 0);
-- The worker holding the step's claim, and until when.
ALTER TABLE jobgraph_steps ADD COLUMN worker TEXT;
ALTER TABLE jobgraph_steps ADD COLUMN lease_until INTEGER;

CREATE INDEX jobgraph_steps_ready ON jobgraph_steps (job, priority DESC, ready_at)
    WHERE state = 'pending' AND ready_at IS NOT NULL;
CREATE INDEX jobgraph_steps_leased ON jobgraph_steps (lease_until)
    WHERE state = 'pending' AND worker IS NOT NULL;

-- Per-step limits across every worker (`#[step(concurrency = .., rate = ..)]`), as the latest
-- submit declared them, and the rate's token bucket.
CREATE TABLE jobgraph_limits (
    job            TEXT    NOT NULL,
    step           TEXT    NOT NULL,
    concurrency    INTEGER CHECK (concurrency > 0),
    rate_count     INTEGER CHECK (rate_count > 0),
    rate_period_ms INTEGER CHECK (rate_period_ms > 0),
    burst          INTEGER CHECK (burst > 0),
    tokens         REAL    NOT NULL DEFAULT 0,
    refilled_at    INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (job, step)
) STRICT;

-- Counting a limited step's live claims.
CREATE INDEX jobgraph_steps_claimed ON jobgraph_steps (job, name)
    WHERE state = 'pending' AND worker IS NOT NULL;
