-- Schema version 2 of the PostgreSQL store: the queue, with the columns and semantics of
-- SQLite's version 2 (`../migrations/0002_queue.sql`) in PostgreSQL's types. A run submitted by
-- a client (`queued`) is executed one step at a time by workers: each ready step is claimed
-- (`FOR UPDATE SKIP LOCKED`) under a lease fenced by its claim number, and completing it makes
-- its children ready in the same transaction. Times are `timestamptz` on the database's clock
-- (`now()`), except the ones a client or worker chose (`run_at`, `expires_at`, `retry_at`), given
-- in Unix ms and stored as they are. This is the design the plan in version 1's header became:
-- steps keep their states (a claimed step is `pending` with a `worker`), as in SQLite.

-- Submitted through the queue (not opened by a runner).
ALTER TABLE jobgraph_runs ADD COLUMN queued boolean NOT NULL DEFAULT false;
-- A duplicate submit with the same key returns the first run (unique per job).
ALTER TABLE jobgraph_runs ADD COLUMN idem_key text;
-- Higher first.
ALTER TABLE jobgraph_runs ADD COLUMN priority integer NOT NULL DEFAULT 0;
-- The run fails when it has not ended by then (its time to live).
ALTER TABLE jobgraph_runs ADD COLUMN expires_at timestamptz;
-- How many claims of one step may expire (its worker died or stalled) before the step fails.
ALTER TABLE jobgraph_runs ADD COLUMN max_attempts bigint NOT NULL DEFAULT 5
    CHECK (max_attempts > 0);
-- How many times one step may return an error before it fails for good (NULL: its retry policy
-- alone decides).
ALTER TABLE jobgraph_runs ADD COLUMN max_fails bigint CHECK (max_fails > 0);
-- Submitted held (Alya's waitabit): no step is ready until the batch is released.
ALTER TABLE jobgraph_runs ADD COLUMN held boolean NOT NULL DEFAULT false;

-- The arbiter of concurrent duplicate submits (`INSERT ... ON CONFLICT DO NOTHING`).
CREATE UNIQUE INDEX jobgraph_runs_by_key ON jobgraph_runs (job, idem_key)
    WHERE idem_key IS NOT NULL;
-- The runs whose time to live may expire: only those that have not ended.
CREATE INDEX jobgraph_runs_expiring ON jobgraph_runs (expires_at)
    WHERE queued AND expires_at IS NOT NULL AND state IN ('pending', 'running');

-- The job, copied from the run: claims filter on it without a join.
ALTER TABLE jobgraph_steps ADD COLUMN job text;
-- How many of the step's dependencies (parents and `after`) have not completed.
ALTER TABLE jobgraph_steps ADD COLUMN waiting integer NOT NULL DEFAULT 0 CHECK (waiting >= 0);
-- Queued runs: when the pending step may be claimed; NULL while it waits for dependencies.
ALTER TABLE jobgraph_steps ADD COLUMN ready_at timestamptz;
-- The run's priority, copied: the claim's order.
ALTER TABLE jobgraph_steps ADD COLUMN priority integer NOT NULL DEFAULT 0;
-- How many times the step was claimed: the fence of each claim.
ALTER TABLE jobgraph_steps ADD COLUMN claims bigint NOT NULL DEFAULT 0 CHECK (claims >= 0);
-- How many of its claims returned an error.
ALTER TABLE jobgraph_steps ADD COLUMN fails bigint NOT NULL DEFAULT 0 CHECK (fails >= 0);
-- The worker holding the step's claim, and until when.
ALTER TABLE jobgraph_steps ADD COLUMN worker text;
ALTER TABLE jobgraph_steps ADD COLUMN lease_until timestamptz;

-- What a claim scans: the ready steps of its jobs, in the queue's order.
CREATE INDEX jobgraph_steps_ready ON jobgraph_steps (job, priority DESC, ready_at)
    WHERE state = 'pending' AND ready_at IS NOT NULL;
-- Claims whose lease expired (the sweep of exhausted steps).
CREATE INDEX jobgraph_steps_leased ON jobgraph_steps (lease_until)
    WHERE state = 'pending' AND worker IS NOT NULL;
-- Counting a limited step's live claims.
CREATE INDEX jobgraph_steps_claimed ON jobgraph_steps (job, name)
    WHERE state = 'pending' AND worker IS NOT NULL;

-- Per-step limits across every worker (`#[step(concurrency = .., rate = ..)]`), as the latest
-- submit declared them, and the rate's token bucket. A claim of a limited step locks its row
-- (`FOR UPDATE`) for the claim's transaction: the claims of one limited step are serialized,
-- each counting the live claims the ones before it committed.
CREATE TABLE jobgraph_limits (
    job            text             NOT NULL,
    step           text             NOT NULL,
    concurrency    bigint           CHECK (concurrency > 0),
    rate_count     bigint           CHECK (rate_count > 0),
    rate_period_ms bigint           CHECK (rate_period_ms > 0),
    burst          bigint           CHECK (burst > 0),
    tokens         double precision NOT NULL DEFAULT 0,
    refilled_at    timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (job, step)
);
