//! The SQL summary job of Go's asyncjob, written with jobgraph.
//!
//! Eight steps query two tables of an in-memory fake database and summarize them:
//!
//! ```text
//! get_connection ─┬─ get_table_client1 ── query_table1 ─┐
//!                 └─ get_table_client2 ── query_table2 ─┴─ summarize ┄┄ email_notification
//! check_auth ┄┄┄┄┄┄┄┄┄┄┄┄┄┄┄┄┄┄┄┄┄┄┄┄┄┄┄┄┄┄┄┄┄┄┄┄┄┄┄┄┄┄┄┄┄┘ (after, both queries)
//! ```
//!
//! A step's parameters name the steps whose outputs it consumes (`get_table_client1` takes
//! `get_connection: &Connection`); `#[step(after(..))]` orders a step without passing data
//! (the queries wait for `check_auth`, the e-mail waits for `summarize`). Each step sleeps a few
//! milliseconds and logs when it starts and ends, so you can see independent steps overlap and the
//! whole run take the graph's critical path rather than the sum of the steps.
//!
//! Run it from the workspace root:
//!
//! ```text
//! cargo run -p jobgraph-examples --example sql_summary
//! ```
//!
//! It prints the graph in Graphviz DOT (pipe it to `dot -Tsvg` to draw it), the step log, the
//! summary and the elapsed time. Pass `--fail-auth` to make `check_auth` fail and see the
//! [`jobgraph::JobError`]: the failed step, its error, and the steps skipped because of it (the
//! process then exits with status 1):
//!
//! ```text
//! cargo run -p jobgraph-examples --example sql_summary -- --fail-auth
//! ```

use std::collections::HashMap;
use std::error::Error as _;
use std::fmt;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jobgraph::{StepContext, job};

/// The token the fake database accepts.
const VALID_TOKEN: &str = "s3cret";

/// One row of a fake table: a region and an amount sold there.
#[derive(Debug, Clone)]
struct Row {
    /// The region the sale was made in.
    region: &'static str,
    /// The amount sold, in cents.
    amount: u64,
}

/// The rows a query returned.
type Rows = Vec<Row>;

/// An in-memory stand-in for a SQL database: named tables of rows.
#[derive(Debug)]
struct FakeDb {
    /// The tables, by name.
    tables: HashMap<&'static str, Rows>,
}

impl FakeDb {
    /// A database with two small sales tables, `sales_2023` and `sales_2024`.
    fn sample() -> Self {
        let row = |region, amount| Row { region, amount };
        let tables = HashMap::from([
            (
                "sales_2023",
                vec![
                    row("north", 12_000),
                    row("south", 8_500),
                    row("west", 4_250),
                ],
            ),
            (
                "sales_2024",
                vec![
                    row("north", 15_500),
                    row("south", 9_000),
                    row("east", 6_000),
                    row("west", 3_750),
                ],
            ),
        ]);
        FakeDb { tables }
    }
}

/// An open connection to the fake database.
#[derive(Debug, Clone)]
struct Connection {
    /// The database this connection talks to.
    db: Arc<FakeDb>,
}

/// A client bound to one table of the database.
#[derive(Debug, Clone)]
struct TableClient {
    /// The connection the client was made from.
    conn: Connection,
    /// The table it queries.
    table: &'static str,
}

/// What the job produces: totals of both tables.
#[derive(Debug, Clone)]
struct Summary {
    /// The first table's name, its row count and its total amount.
    first: (&'static str, usize, u64),
    /// The second table's name, its row count and its total amount.
    second: (&'static str, usize, u64),
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (table, rows, total) in [self.first, self.second] {
            writeln!(f, "  {table}: {rows} rows, total {}", Money(total))?;
        }
        let (a, b) = (self.first.2, self.second.2);
        let change = (b as f64 - a as f64) / a as f64 * 100.0;
        write!(f, "  change: {change:+.1}%")
    }
}

/// An amount in cents, displayed as dollars.
struct Money(u64);

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "${}.{:02}", self.0 / 100, self.0 % 100)
    }
}

/// A failure of the fake database.
#[derive(Debug, thiserror::Error)]
enum DbError {
    /// The queried table does not exist.
    #[error("table `{0}` does not exist")]
    NoSuchTable(&'static str),
}

/// A failed authorization check.
#[derive(Debug, thiserror::Error)]
enum AuthError {
    /// The caller's token was not accepted.
    #[error("token `{token}` was rejected by the database")]
    InvalidToken {
        /// The rejected token.
        token: String,
    },
}

/// A failure to send the notification e-mail.
#[derive(Debug, thiserror::Error)]
enum MailError {
    /// There is nobody to send the e-mail to.
    #[error("no recipient configured")]
    NoRecipient,
}

/// The job's input: the database, the caller's token and who to notify.
struct SqlSummary {
    /// The database to summarize.
    db: Arc<FakeDb>,
    /// The token `check_auth` presents.
    token: String,
    /// Where `email_notification` sends the summary.
    recipient: String,
    /// When the program started, for the step log's timestamps.
    started: Instant,
}

#[job]
impl SqlSummary {
    /// Opens a connection to the database.
    #[step]
    async fn get_connection(&self) -> Result<Connection, DbError> {
        self.work("get_connection", 30).await;
        Ok(Connection {
            db: Arc::clone(&self.db),
        })
    }

    /// Checks that the caller may read the tables; the queries wait for it.
    #[step]
    async fn check_auth(&self) -> Result<(), AuthError> {
        self.work("check_auth", 20).await;
        if self.token != VALID_TOKEN {
            return Err(AuthError::InvalidToken {
                token: self.token.clone(),
            });
        }
        Ok(())
    }

    /// Makes a client for the first table from the connection.
    #[step]
    async fn get_table_client1(&self, get_connection: &Connection) -> Result<TableClient, DbError> {
        self.work("get_table_client1", 20).await;
        Ok(TableClient {
            conn: get_connection.clone(),
            table: "sales_2023",
        })
    }

    /// Makes a client for the second table from the connection.
    #[step]
    async fn get_table_client2(&self, get_connection: &Connection) -> Result<TableClient, DbError> {
        self.work("get_table_client2", 20).await;
        Ok(TableClient {
            conn: get_connection.clone(),
            table: "sales_2024",
        })
    }

    /// Reads every row of the first table, once `check_auth` has passed.
    #[step(after(check_auth))]
    async fn query_table1(&self, get_table_client1: &TableClient) -> Result<Rows, DbError> {
        self.work("query_table1", 40).await;
        Self::select_all(get_table_client1)
    }

    /// Reads every row of the second table, once `check_auth` has passed.
    #[step(after(check_auth))]
    async fn query_table2(&self, get_table_client2: &TableClient) -> Result<Rows, DbError> {
        self.work("query_table2", 30).await;
        Self::select_all(get_table_client2)
    }

    /// Totals both query results.
    #[step]
    async fn summarize(&self, query_table1: &Rows, query_table2: &Rows) -> Summary {
        self.work("summarize", 10).await;
        let total = |rows: &Rows| rows.iter().map(|r| r.amount).sum::<u64>();
        let regions: Vec<_> = query_table2.iter().map(|r| r.region).collect();
        self.log(
            "summarize",
            &format!("regions in 2024: {}", regions.join(", ")),
        );
        Summary {
            first: ("sales_2023", query_table1.len(), total(query_table1)),
            second: ("sales_2024", query_table2.len(), total(query_table2)),
        }
    }

    /// E-mails the recipient that the summary is ready.
    #[step(after(summarize))]
    async fn email_notification(&self, ctx: &StepContext) -> Result<(), MailError> {
        self.work("email_notification", 10).await;
        if self.recipient.is_empty() {
            return Err(MailError::NoRecipient);
        }
        self.log(
            ctx.step_name(),
            &format!(
                "mailed {}: summary of job {} (run {}) is ready",
                self.recipient,
                ctx.job_name(),
                ctx.job_id()
            ),
        );
        Ok(())
    }

    /// Simulates `ms` milliseconds of I/O for `step`, logging its start and end.
    ///
    /// A plain method: without `#[step]` the macro leaves it alone.
    async fn work(&self, step: &str, ms: u64) {
        self.log(step, "start");
        tokio::time::sleep(Duration::from_millis(ms)).await;
        self.log(step, &format!("done ({ms} ms)"));
    }

    /// Prints one line of the step log, stamped with the time since the program started.
    fn log(&self, step: &str, message: &str) {
        let ms = self.started.elapsed().as_millis();
        println!("[{ms:>4} ms] {step:<18} {message}");
    }

    /// `SELECT * FROM <table>` against the fake database.
    fn select_all(client: &TableClient) -> Result<Rows, DbError> {
        client
            .conn
            .db
            .tables
            .get(client.table)
            .cloned()
            .ok_or(DbError::NoSuchTable(client.table))
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let fail_auth = std::env::args().skip(1).any(|arg| arg == "--fail-auth");

    println!("{}", SqlSummary::DOT);

    let job = SqlSummary {
        db: Arc::new(FakeDb::sample()),
        token: if fail_auth { "expired" } else { VALID_TOKEN }.to_owned(),
        recipient: "sales-team@example.com".to_owned(),
        started: Instant::now(),
    };

    let started = Instant::now();
    let result = job.run().await;
    let elapsed = started.elapsed();

    match result {
        Ok(outputs) => {
            println!("\nsummary:\n{}", outputs.summarize);
            println!("\nelapsed: {elapsed:.0?} (the steps' sleeps add up to 180 ms)");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("\nerror: {}", jobgraph_examples::error_chain(&err));
            eprintln!("  failed step:   {}", err.step());
            if let Some(auth) = err.source().and_then(|e| e.downcast_ref::<AuthError>()) {
                eprintln!("  its error:     {auth:?}");
            }
            let skipped: Vec<_> = err.skipped().iter().map(|s| s.name()).collect();
            eprintln!("  skipped steps: {}", skipped.join(", "));
            eprintln!("  elapsed:       {elapsed:.0?}");
            ExitCode::FAILURE
        }
    }
}
