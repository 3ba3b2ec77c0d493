-- Schema version 5: each queued step's time to run (TTR). A claim of the step, or of one of its
-- `for_each` elements, is a lease of its TTR (the step's `timeout`, at least `MIN_TTR`), renewed
-- by heartbeats by as much, so a worker that dies holding a step with a 2 s timeout frees it in
-- about 2 s. NULL: the claiming worker's own lease (`Worker::lease`). Filled at submit; an
-- element copies its step's when the fan-out is expanded.
ALTER TABLE jobgraph_steps ADD COLUMN ttr_ms INTEGER CHECK (ttr_ms > 0);
ALTER TABLE jobgraph_queue_elements ADD COLUMN ttr_ms INTEGER CHECK (ttr_ms > 0);
