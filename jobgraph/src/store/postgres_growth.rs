//! Plans kept in step with the queue tables' sizes.
//!
//! The PostgreSQL store plans each statement once per connection (`force_generic_plan`) and
//! keeps the plan until PostgreSQL invalidates it, which it does when the planner statistics
//! of a table the plan reads change (`ANALYZE`, `VACUUM`). A plan made while a table was small
//! may read it whole (a sequential scan is the cheapest way to read a few pages) or join a list
//! to it by hashing the whole table, and keeps doing so after the table grew: a worker that
//! started on an empty database, then a submit of 40,000 runs, and one commit's statement
//! making children ready read the 200,000 pending steps once per child (33 s). Autovacuum
//! analyzes a table about a minute after it changed by a tenth; a submit or a fan-out's
//! expansion grows a table a hundredfold in a second.
//!
//! So the store counts the rows it inserts into each queue table (runs, steps, fan-out
//! elements), and when they reach what the planner believes the table holds (the table at
//! least doubled; and [`MIN_GROWTH`] rows), it analyzes the table after the write's commit:
//! every session's plans that read it are made again at their next run, for its size. A plan
//! goes wrong when the table it was made for was a hundred times smaller, not twice; and each
//! analysis costs its sample's reading and every session's planning again, so a table of a
//! million rows is analyzed about ten times on its way there (at a tenth, the `for_each` queue
//! bench, inserting 200,000 elements in ten seconds, lost 7-18% of its rate to 55 analyses).
//! Growth by other processes is counted by their stores; slow growth is autovacuum's.

use std::sync::atomic::{AtomicUsize, Ordering};

use sqlx::PgPool;

/// A queue table whose growth is counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Table {
    Runs,
    Steps,
    Elements,
}

impl Table {
    fn name(self) -> &'static str {
        match self {
            Table::Runs => "jobgraph_runs",
            Table::Steps => "jobgraph_steps",
            Table::Elements => "jobgraph_queue_elements",
        }
    }
}

/// Below this many inserted rows a table is not analyzed for them: plans for a table of a few
/// hundred rows cost little whatever they are, and autovacuum analyzes such a table within a
/// minute.
pub(super) const MIN_GROWTH: usize = 1_000;

/// The rows a store inserted into each table since it last analyzed it, and how many more it
/// waits for before it looks at the table's statistics again. Shared by the store's clones.
#[derive(Debug, Default)]
pub(super) struct Growth {
    inserted: [AtomicUsize; 3],
    /// The rows the planner believed the table held when last looked at (0: never looked;
    /// [`MIN_GROWTH`] applies).
    next_look: [AtomicUsize; 3],
}

impl Growth {
    /// Counts `rows` committed into each table, and analyzes those that grew by as many rows as
    /// the planner believes they hold. The rows are committed whatever this finds: a failure
    /// to read the statistics or to analyze is logged, and the rows stay counted (the next
    /// write looks again).
    pub(super) async fn grew(&self, pool: &PgPool, rows: &[(Table, usize)]) {
        let mut due = Vec::new();
        for &(table, n) in rows {
            let i = table as usize;
            let inserted = self.inserted[i]
                .fetch_add(n, Ordering::Relaxed)
                .saturating_add(n);
            if inserted >= self.next_look[i].load(Ordering::Relaxed).max(MIN_GROWTH) {
                due.push((table, inserted));
            }
        }
        if due.is_empty() {
            return;
        }
        if let Err(error) = self.analyze_grown(pool, &due).await {
            tracing::warn!(%error, "the store could not analyze the queue tables it grew; \
                autovacuum will (plans made for their old sizes serve until then)");
        }
    }

    /// Analyzes each of `due` (a table, and the rows inserted since it was last analyzed here)
    /// that grew by as many rows as its statistics count.
    async fn analyze_grown(
        &self,
        pool: &PgPool,
        due: &[(Table, usize)],
    ) -> Result<(), sqlx::Error> {
        let names: Vec<&str> = due.iter().map(|(table, _)| table.name()).collect();
        // `reltuples` is -1 for a table never analyzed.
        let believed: Vec<(String, f32)> = sqlx::query_as(
            "SELECT relname::text, greatest(reltuples, 0) FROM pg_class
            WHERE oid = ANY (SELECT to_regclass(t) FROM unnest($1::text[]) AS t)",
        )
        .bind(&names)
        .fetch_all(pool)
        .await?;
        let mut grown = Vec::new();
        for &(table, inserted) in due {
            let rows = believed
                .iter()
                .find(|(name, _)| name == table.name())
                .map_or(0, |(_, rows)| *rows as usize);
            let i = table as usize;
            if inserted >= rows.max(MIN_GROWTH) {
                grown.push(table.name());
                // Two writes may find one table due at once, each with the count it saw: the
                // count never goes below zero (it would wrap, and the next addition overflow).
                let _ = self.inserted[i].fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    Some(n.saturating_sub(inserted))
                });
                self.next_look[i].store(rows.saturating_add(inserted), Ordering::Relaxed);
            } else {
                // Analyzed since by another process, or by autovacuum.
                self.next_look[i].store(rows, Ordering::Relaxed);
            }
        }
        if !grown.is_empty() {
            // `SKIP_LOCKED`: a table being analyzed or vacuumed by another session (which
            // invalidates the same plans) is left to it.
            sqlx::raw_sql(&format!("ANALYZE (SKIP_LOCKED) {}", grown.join(", ")))
                .execute(pool)
                .await?;
        }
        Ok(())
    }
}
