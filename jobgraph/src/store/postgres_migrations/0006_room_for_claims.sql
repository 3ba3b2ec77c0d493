-- Schema version 6 of the PostgreSQL store: room on every page for a claim's new row versions.
--
-- A claim takes up to a few hundred ready steps in one statement, and those are neighbours on
-- their pages (steps are stored in submit order, and claimed in it). A HOT update (no new index
-- entry) needs room for the new version on the old one's page, and versions written in the same
-- transaction cannot be pruned to make it. At `fillfactor` 70 there was room for the new
-- versions of about two rows in five; the rest were written elsewhere with a new entry in each
-- of the table's indexes (4 more WAL records and about 14 more pages read per claimed step).
-- At 50, every row of a page can get its claimed version beside it, and a run's row its start
-- (in the claim's transaction too). Measured with the queue bench's `--diagnose`: a claim wrote
-- 4.6 WAL records per single-step job instead of 9.6, and read 24 pages instead of 38; one
-- worker burned down 29,552 jobs/s instead of 24,571. Applies to pages written from now on.
ALTER TABLE jobgraph_steps SET (fillfactor = 50);
ALTER TABLE jobgraph_runs SET (fillfactor = 50);
ALTER TABLE jobgraph_queue_elements SET (fillfactor = 50);
