-- Schema version 16 of the PostgreSQL store: a step or fan-out element that a process of an
-- older build inserts is marked `limited` from the limit rows, as this build's inserts are.
--
-- Versions 14 and 15 added `limited` with a default of false, and this build's statements set
-- it on every row they insert. But a fleet is upgraded process by process: the first process
-- of a new build migrates the database, and the processes of the build before it keep running
-- until they are replaced, their statements naming the columns they knew. A row they inserted
-- took the default, so a step with limits (declared by its job, its limit row stored) was
-- claimed as if it had none, beside its limit, by every worker of the new build. Now the
-- column has no default: a row inserted without it is `NULL`, and a trigger, which fires for
-- those rows only, marks it from the limit rows before it is stored. This build's inserts
-- name the column, so the trigger never runs for them.
ALTER TABLE jobgraph_steps ALTER COLUMN limited DROP DEFAULT;
ALTER TABLE jobgraph_queue_elements ALTER COLUMN limited DROP DEFAULT;

CREATE FUNCTION jobgraph_mark_limited_step() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.limited := EXISTS (SELECT 1 FROM jobgraph_limits l
        WHERE l.job = NEW.job AND l.step = NEW.name);
    RETURN NEW;
END
$$;

CREATE FUNCTION jobgraph_mark_limited_element() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.limited := EXISTS (SELECT 1 FROM jobgraph_limits l
        WHERE l.job = NEW.job AND l.step = NEW.step);
    RETURN NEW;
END
$$;

CREATE TRIGGER jobgraph_steps_limited BEFORE INSERT ON jobgraph_steps
    FOR EACH ROW WHEN (NEW.limited IS NULL) EXECUTE FUNCTION jobgraph_mark_limited_step();
CREATE TRIGGER jobgraph_queue_elements_limited BEFORE INSERT ON jobgraph_queue_elements
    FOR EACH ROW WHEN (NEW.limited IS NULL) EXECUTE FUNCTION jobgraph_mark_limited_element();
