-- Schema version 12 of the PostgreSQL store: `jobgraph_at` is inlined into the statements that
-- call it.
--
-- PostgreSQL inlines a call of an SQL function into its statement unless, among other things,
-- the function is declared `IMMUTABLE` and its body is not. `jobgraph_at` was, and its body adds
-- an interval to a `timestamptz`, which is `STABLE` (with days or months in the interval the sum
-- depends on the time zone). So every call ran the function as a query of its own: 0.65 µs a
-- call against 0.08 inlined (200,000 rows), and in a `perf` profile of four worker processes
-- burning down single-step jobs, 4.5% of the samples (every completion calls it once per step).
-- Declared `STABLE`, what its body is, it is inlined. Its result is the same: the interval
-- holds milliseconds only, which no time zone changes. No index or constraint uses it.
CREATE OR REPLACE FUNCTION jobgraph_at(ms bigint) RETURNS timestamptz
    LANGUAGE sql STABLE STRICT PARALLEL SAFE
    AS $$ SELECT to_timestamp(ms / 1000) + (ms % 1000) * interval '1 millisecond' $$;
