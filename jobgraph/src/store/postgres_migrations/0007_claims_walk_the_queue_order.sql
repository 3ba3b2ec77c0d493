-- Schema version 7 of the PostgreSQL store: a claim walks the queue's index whatever the
-- planner's statistics say.
--
-- A claim asks for the ready steps of a job in the queue's order (`ORDER BY ... LIMIT n`), and
-- two partial indexes covered its condition: `jobgraph_steps_ready` (in that order) and
-- `jobgraph_steps_ready_by_name` (`job, name`, for counting a limited step's live claims). Right
-- after a large submit, before autovacuum analyzes the table again (a minute or more), the
-- statistics say almost no step is pending: the planner estimated one ready row, found both
-- scans equally cheap, and could take the second. Every claim then read and sorted the whole
-- backlog instead of stopping after the rows it takes: in the queue bench, an external merge
-- sort of 60,000 steps was 37 ms of a 47 ms claim, and a 60,000-job burn-down ran at 10,400
-- jobs/s instead of 26,500 (the elements' claim likewise sorted 98,000 elements).
--
-- The counting indexes now also require the step's name, which a claim does not give, so the
-- planner cannot use them for a claim; every statement they serve names the step (`name = ...`
-- implies `name IS NOT NULL`), so it still can there.
DROP INDEX jobgraph_steps_ready_by_name;
CREATE INDEX jobgraph_steps_ready_by_name ON jobgraph_steps (job, name)
    WHERE state = 'pending' AND ready_at IS NOT NULL AND name IS NOT NULL;
DROP INDEX jobgraph_queue_elements_ready_by_name;
CREATE INDEX jobgraph_queue_elements_ready_by_name ON jobgraph_queue_elements (job, step)
    WHERE state = 'pending' AND ready_at IS NOT NULL AND step IS NOT NULL;
