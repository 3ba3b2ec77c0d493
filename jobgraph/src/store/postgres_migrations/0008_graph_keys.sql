-- Schema version 8 of the PostgreSQL store: each run stores its graph's key.
--
-- Claims and commits need the graph of every run they touch, and returned it as text with
-- every claimed step and locked run: a conversion of the JSON per row, its bytes on the wire,
-- and a hash of the whole text in the worker to find the graph it had parsed. They now return
-- the graph's key, the SHA-256 of its text (written by the submit), and a worker reads the
-- text of each graph once (`postgres_graphs.rs`). Runs stored before have no key (NULL): the
-- statements compute it from their text, so the column needs no backfill (adding it rewrites
-- nothing).
ALTER TABLE jobgraph_runs ADD COLUMN graph_key bytea;
