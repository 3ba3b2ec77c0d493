-- Schema version 1 of the PostgreSQL store: runs, their steps, and the completed elements of
-- `for_each` steps; the same contract as SQLite's version 1 (`../migrations/`), in PostgreSQL's
-- types. Times are `timestamptz`, written by the database's clock (`now()`) except a step's
-- `started_at` and `ended_at`, which the runner measured; the store's API speaks Unix
-- milliseconds, converted by the two functions below. Inputs and outputs are `text`, stored and
-- returned byte for byte (the store never parses them; `jsonb` would reformat them); the graph,
-- which the store does read, is `jsonb`.
--
-- What the distributed part adds (a later migration), on these keys:
-- - `jobgraph_steps`, keyed by (run_id, idx), gains the states `ready` and `running`, a lease of
--   its own (`lease_owner`, `lease_until`) fenced by `attempt` (the attempt number a worker
--   claimed: a commit names it, so a stale worker can never commit), and the columns a claim
--   orders by (`priority`, `run_at`, copied from the run), with a partial index on ready steps so
--   that `SELECT ... WHERE state = 'ready' AND run_at <= now() ORDER BY priority DESC, run_at
--   FOR UPDATE SKIP LOCKED LIMIT 1` reads only claimable rows;
-- - `jobgraph_runs` gains `priority`, `run_at`, `expires_at` (TTL), `max_attempts`, `max_fails`
--   and an idempotency key; `jobgraph_elements`, keyed by (run_id, step_idx, idx), gains a state
--   and a lease per element, so a fan-out is claimed element by element.

-- Unix milliseconds of a time (rounded down), and the time of Unix milliseconds: exact both
-- ways for whole milliseconds, in any year `timestamptz` holds. Whole seconds and what is
-- below them go apart, each an integer: floats carry them exactly (`extract` returns a float
-- before PostgreSQL 14, `to_timestamp` takes one), where one float of seconds with their
-- fraction would land a millisecond low (`to_timestamp(ms / 1000.0)` does from about 2255 on).
CREATE FUNCTION jobgraph_ms(t timestamptz) RETURNS bigint
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    AS $$ SELECT extract(epoch FROM date_trunc('second', t AT TIME ZONE 'UTC'))::bigint * 1000
               + (extract(microseconds FROM t AT TIME ZONE 'UTC')::bigint % 1000000) / 1000 $$;

CREATE FUNCTION jobgraph_at(ms bigint) RETURNS timestamptz
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    AS $$ SELECT to_timestamp(ms / 1000) + (ms % 1000) * interval '1 millisecond' $$;

CREATE TABLE jobgraph_runs (
    id          text        NOT NULL PRIMARY KEY,
    -- Creation order: the tie-break of "newest first" between runs created in one millisecond
    -- (SQLite's rowid).
    seq         bigint      NOT NULL GENERATED ALWAYS AS IDENTITY,
    job         text        NOT NULL,
    batch       text,
    input       text        NOT NULL,
    graph       jsonb       NOT NULL,
    state       text        NOT NULL
        CHECK (state IN ('pending', 'running', 'succeeded', 'failed', 'cancelled')),
    error       text,
    -- The runner executing the run, and until when (fencing: every write checks the owner).
    lease_owner text,
    lease_until timestamptz,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL,
    CHECK ((lease_owner IS NULL) = (lease_until IS NULL))
);

CREATE INDEX jobgraph_runs_by_created ON jobgraph_runs (created_at DESC, seq DESC);
CREATE INDEX jobgraph_runs_by_job ON jobgraph_runs (job, created_at DESC, seq DESC);
CREATE INDEX jobgraph_runs_by_batch ON jobgraph_runs (batch, created_at DESC, seq DESC)
    WHERE batch IS NOT NULL;

CREATE TABLE jobgraph_steps (
    run_id     text        NOT NULL REFERENCES jobgraph_runs (id) ON DELETE CASCADE,
    -- The step's index in the run's graph (`GraphSpec::steps`): steps are listed in graph order,
    -- and the graph's edges name steps by it.
    idx        integer     NOT NULL CHECK (idx >= 0),
    name       text        NOT NULL,
    state      text        NOT NULL
        CHECK (state IN ('pending', 'completed', 'failed', 'skipped', 'cancelled')),
    attempts   bigint      NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    output     text,
    error      text,
    started_at timestamptz,
    ended_at   timestamptz,
    PRIMARY KEY (run_id, idx),
    UNIQUE (run_id, name)
);

-- Redrive of every run where a step failed.
CREATE INDEX jobgraph_steps_failed ON jobgraph_steps (name) WHERE state = 'failed';

CREATE TABLE jobgraph_elements (
    run_id   text    NOT NULL,
    step_idx integer NOT NULL,
    idx      bigint  NOT NULL CHECK (idx >= 0),
    output   text    NOT NULL,
    PRIMARY KEY (run_id, step_idx, idx),
    FOREIGN KEY (run_id, step_idx) REFERENCES jobgraph_steps (run_id, idx) ON DELETE CASCADE
);
