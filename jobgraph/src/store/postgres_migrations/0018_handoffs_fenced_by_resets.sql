-- Schema version 18 of the PostgreSQL store: a commit hands a step over to its worker without
-- reading the step's row, and the claim is fenced by the run's count of resets.
--
-- Since schema version 17 a commit hands over, without writing them, the steps its completions
-- make ready, and the claim is the row's version (`xmin`): a write under it is stored only while
-- nothing wrote the row since. Knowing the version meant reading each row, under the run's lock
-- the commit holds: 2.2 of the 6.4 µs of server time per step that readiness costs. Now a child
-- all of whose dependencies completed in the commit is handed over from what the commit knows
-- (the graph, and the run's row it locked), without reading its row, and every hand-off's claim
-- is the run's `resets` when it was handed over. Of the writes to a handed step's row, the only
-- one that leaves it looking unwritten (pending, unclaimed, not ready) is a reset's (or
-- redrive's), which queues the step again: it counts itself here, and a claim handed over
-- before it is refused. Every other write marks the row (a claim written in, a state, `ready_at`).
--
-- A step may be handed over this way only if the run's row says a claim could take it with the
-- worker's lease: `plain`, no step of the run has a TTR and none is a fan-out (set at submit; a
-- row inserted by a process of an older build, which does not know the column, is not plain),
-- and no time to live (`expires_at`, already on the row). A job with limits is read for each
-- commit (`jobgraph_limits`). Other steps are read and written as before.
ALTER TABLE jobgraph_runs
    ADD COLUMN resets bigint NOT NULL DEFAULT 0,
    ADD COLUMN plain boolean NOT NULL DEFAULT false;

-- A fleet is upgraded process by process, and a process of the build before this one resets a
-- step without counting it. Each of its resets clears the run's time to live in a statement of
-- its own, which changes nothing else: that statement is counted here (a run that ends clears
-- its time to live too, and changes its state: not counted, and no claim matters then). This
-- build's resets count themselves in that statement, so the trigger never runs for them.
CREATE FUNCTION jobgraph_count_reset() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.resets := OLD.resets + 1;
    RETURN NEW;
END
$$;

CREATE TRIGGER jobgraph_runs_reset BEFORE UPDATE OF expires_at ON jobgraph_runs
    FOR EACH ROW WHEN (NEW.resets = OLD.resets AND NEW.state = OLD.state
        AND NEW.expires_at IS NULL)
    EXECUTE FUNCTION jobgraph_count_reset();
