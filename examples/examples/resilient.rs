//! A job that survives a flaky upstream: retries with back-off, per-attempt timeouts, context
//! enrichment and `tracing` output, then the run's report as a Gantt chart and a coloured graph.
//!
//! The job fetches a sales report from a fake HTTP server and stores it:
//!
//! ```text
//! resolve_endpoint ─┬─ fetch_page ─────┬─ parse ── store ┄┄ notify
//!                   └─ fetch_metadata ─┘
//! ```
//!
//! The server misbehaves on purpose:
//!
//! - `fetch_page` gets `503 Service Unavailable` on its first two requests. Its
//!   `#[step(retry = ..)]` policy retries transient errors only, with exponential back-off
//!   (20 ms, then 40 ms), so the third attempt succeeds.
//! - `fetch_metadata`'s first request hangs. Its `#[step(timeout = ..)]` drops the attempt after
//!   50 ms, and its retry policy (timeouts are retried like any error but a panic) tries again;
//!   the second request answers at once.
//! - `notify` waits for `store` with `#[step(after(store))]` without consuming its output.
//!
//! `#[job(enrich = request_id)]` runs before every attempt of every step: it puts a typed
//! `RequestId` in the step's [`StepContext`] (the fetch steps send it to the server, which logs
//! it) and, with `ctx.record`, adds `request_id=..` to the `fields` field of the attempt's tracing
//! span. `Runner::enrich` adds `tenant=acme` the same way, for this run only. A compact
//! `tracing_subscriber::fmt` subscriber prints every event with its `job` and `step` spans, so
//! each retry and timeout shows with its attempt number and request id.
//!
//! Run it from the workspace root:
//!
//! ```text
//! cargo run -p jobgraph-examples --example resilient
//! ```
//!
//! The first run uses a fixed job id and `run_with_report`; the program prints the server's
//! access log, a Mermaid Gantt chart of the run (paste it into <https://mermaid.live>), and the
//! run's Graphviz DOT with each step filled by its state (pipe it to `dot -Tsvg`). A second run
//! against a server whose page never comes back is spawned with `start`, cancelled through its
//! handle, and its report's step states printed.

use std::fmt;
use std::process::ExitCode;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use jobgraph::{JobReport, JobStep, Retry, StepContext, job};

/// The id every attempt of every step sends to the server as its `X-Request-Id`.
///
/// Built by the enrichment from the run's job id, the step and the attempt, so the server's logs
/// tie each request to one attempt of one run.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RequestId(String);

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

/// The job's enrichment: runs before every attempt of every step of [`FetchReport`].
fn request_id(ctx: &mut StepContext) {
    let id = RequestId(format!(
        "{}/{}#{}",
        ctx.job_id(),
        ctx.step_name(),
        ctx.attempt()
    ));
    ctx.record("request_id", &id);
    ctx.insert(id);
}

/// A failed request to the fake server.
#[derive(Debug, thiserror::Error)]
enum FetchError {
    /// The server is overloaded: worth trying again.
    #[error("GET {path}: 503 Service Unavailable")]
    Unavailable {
        /// The requested path.
        path: &'static str,
    },
    /// The step had no request id to send (the enrichment did not run).
    #[error("no request id in the step context")]
    NoRequestId,
}

impl FetchError {
    /// True for the errors a retry may cure.
    fn is_transient(&self) -> bool {
        matches!(self, FetchError::Unavailable { .. })
    }
}

/// A report page the server sent that `parse` could not read.
#[derive(Debug, thiserror::Error)]
#[error("line {line} of the report is not `region,amount`: {text:?}")]
struct ParseError {
    /// The 1-based line number.
    line: usize,
    /// The offending line.
    text: String,
}

/// An in-process stand-in for the reporting service, with scripted misbehaviour.
#[derive(Debug)]
struct FakeServer {
    /// How many page requests fail with 503 before one succeeds.
    page_failures: u32,
    /// How long a successful page request takes.
    page_latency: Duration,
    /// How many metadata requests hang before one answers.
    metadata_stalls: u32,
    /// Page requests received so far.
    page_calls: AtomicU32,
    /// Metadata requests received so far.
    metadata_calls: AtomicU32,
    /// Every request received, as `X-Request-Id` and path.
    access_log: Mutex<Vec<String>>,
}

impl FakeServer {
    /// The page path.
    const PAGE: &str = "/reports/q2-sales.csv";
    /// The metadata path.
    const METADATA: &str = "/reports/q2-sales/meta";

    /// A server with the given misbehaviour and no requests yet.
    fn new(page_failures: u32, page_latency: Duration, metadata_stalls: u32) -> Self {
        FakeServer {
            page_failures,
            page_latency,
            metadata_stalls,
            page_calls: AtomicU32::new(0),
            metadata_calls: AtomicU32::new(0),
            access_log: Mutex::new(Vec::new()),
        }
    }

    /// Logs a request, like a real server's access log.
    fn log(&self, path: &str, request_id: &RequestId) {
        let line = format!("{request_id:<40} GET {path}");
        self.access_log.lock().expect("access log").push(line);
    }

    /// `GET /reports/q2-sales.csv`: the report's rows, after `page_failures` 503s.
    async fn get_page(&self, request_id: &RequestId) -> Result<String, FetchError> {
        self.log(Self::PAGE, request_id);
        let call = self.page_calls.fetch_add(1, Ordering::Relaxed) + 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
        if call <= self.page_failures {
            return Err(FetchError::Unavailable { path: Self::PAGE });
        }
        tokio::time::sleep(self.page_latency).await;
        Ok("north,12000\nsouth,8500\neast,6000\nwest,4250\n".to_owned())
    }

    /// `GET /reports/q2-sales/meta`: the report's title; the first `metadata_stalls` requests
    /// never answer.
    async fn get_metadata(&self, request_id: &RequestId) -> Result<String, FetchError> {
        self.log(Self::METADATA, request_id);
        let call = self.metadata_calls.fetch_add(1, Ordering::Relaxed) + 1;
        if call <= self.metadata_stalls {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        Ok("Q2 sales by region".to_owned())
    }
}

/// Where the report lives: the server's base URL.
#[derive(Debug, Clone)]
struct Endpoint {
    /// `https://host/api/v2`, without a trailing slash.
    base: String,
}

/// The report's metadata.
#[derive(Debug, Clone)]
struct Metadata {
    /// The report's title.
    title: String,
}

/// The parsed report.
#[derive(Debug, Clone)]
struct Report {
    /// Its title, from the metadata.
    title: String,
    /// Its rows: a region and an amount in cents.
    rows: Vec<(String, u64)>,
}

/// Where `store` put the report.
#[derive(Debug, Clone)]
struct StoredAt(String);

/// The job: fetch the quarterly sales report from a flaky server, parse it, store it, notify.
struct FetchReport {
    /// The server to fetch from.
    server: FakeServer,
}

#[job(enrich = request_id)]
impl FetchReport {
    /// Looks up the reporting service's base URL.
    #[step]
    async fn resolve_endpoint(&self) -> Endpoint {
        tokio::time::sleep(Duration::from_millis(10)).await;
        Endpoint {
            base: "https://reports.internal/api/v2".to_owned(),
        }
    }

    /// Downloads the report's rows; retried on 503 with exponential back-off (20 ms, 40 ms).
    #[step(retry = Retry::exponential(3, Duration::from_millis(20))
        .when(|e| e.downcast_ref::<FetchError>().is_some_and(FetchError::is_transient)))]
    async fn fetch_page(
        &self,
        resolve_endpoint: &Endpoint,
        ctx: &StepContext,
    ) -> Result<String, FetchError> {
        let id = ctx.get::<RequestId>().ok_or(FetchError::NoRequestId)?;
        let url = format!("{}{}", resolve_endpoint.base, FakeServer::PAGE);
        tracing::info!(%url, "fetching page");
        self.server.get_page(id).await
    }

    /// Downloads the report's title; each attempt gets 50 ms, and one retry.
    #[step(
        timeout = Duration::from_millis(50),
        retry = Retry::fixed(2, Duration::from_millis(10))
    )]
    async fn fetch_metadata(
        &self,
        resolve_endpoint: &Endpoint,
        ctx: &StepContext,
    ) -> Result<Metadata, FetchError> {
        let id = ctx.get::<RequestId>().ok_or(FetchError::NoRequestId)?;
        let url = format!("{}{}", resolve_endpoint.base, FakeServer::METADATA);
        tracing::info!(%url, "fetching metadata");
        let title = self.server.get_metadata(id).await?;
        Ok(Metadata { title })
    }

    /// Reads the page's `region,amount` lines and titles them with the metadata.
    #[step]
    async fn parse(
        &self,
        fetch_page: &String,
        fetch_metadata: &Metadata,
    ) -> Result<Report, ParseError> {
        let rows = fetch_page
            .lines()
            .enumerate()
            .map(|(i, text)| {
                let error = || ParseError {
                    line: i + 1,
                    text: text.to_owned(),
                };
                let (region, amount) = text.split_once(',').ok_or_else(error)?;
                let amount = amount.parse().map_err(|_| error())?;
                Ok((region.to_owned(), amount))
            })
            .collect::<Result<Vec<_>, _>>()?;
        tracing::info!(rows = rows.len(), "parsed");
        Ok(Report {
            title: fetch_metadata.title.clone(),
            rows,
        })
    }

    /// Writes the report to (simulated) object storage.
    #[step]
    async fn store(&self, parse: &Report, ctx: &StepContext) -> StoredAt {
        tokio::time::sleep(Duration::from_millis(15)).await;
        let at = StoredAt(format!("s3://reports/{}.json", ctx.job_id()));
        let total: u64 = parse.rows.iter().map(|(_, amount)| amount).sum();
        tracing::info!(location = %at.0, total, "stored");
        at
    }

    /// Tells the team the report is ready, once it is stored.
    #[step(after(store))]
    async fn notify(&self, parse: &Report) {
        tokio::time::sleep(Duration::from_millis(5)).await;
        tracing::info!(title = %parse.title, "posted to #sales");
    }
}

/// Prints each step's state, attempts and error.
fn print_states<S: JobStep>(report: &JobReport<S>) {
    for step in report.steps() {
        let error = step.error().map(|e| format!(" ({e})")).unwrap_or_default();
        println!(
            "  {:<16} {:<9} attempts={}{error}",
            step.step().name(),
            step.state().name(),
            step.attempts()
        );
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .compact()
        .with_max_level(tracing::Level::DEBUG)
        .with_target(false)
        .with_timer(tracing_subscriber::fmt::time::uptime())
        .init();

    // Run 1: page fails twice, metadata hangs once; both recover.
    let job = FetchReport {
        server: FakeServer::new(2, Duration::from_millis(10), 1),
    };
    let (result, report) = job
        .runner()
        .job_id("q2-sales-2024-07-01")
        .enrich(|ctx| ctx.record("tenant", "acme"))
        .run_with_report()
        .await;
    let outputs = match result {
        Ok(outputs) => outputs,
        Err(err) => {
            eprintln!("error: {}", jobgraph_examples::error_chain(&err));
            print_states(err.report());
            return ExitCode::FAILURE;
        }
    };
    println!(
        "\n{:?} with {} rows stored at {}",
        outputs.parse.title,
        outputs.parse.rows.len(),
        outputs.store.0
    );
    println!("\nserver access log (X-Request-Id, request):");
    for line in job.server.access_log.lock().expect("access log").iter() {
        println!("  {line}");
    }
    println!("\n{}", report.mermaid_gantt());
    println!("{}", report.dot());

    // Run 2: the page never comes back; cancel the run through its handle.
    let job = FetchReport {
        server: FakeServer::new(0, Duration::from_secs(3600), 0),
    };
    let handle = job.start();
    tokio::time::sleep(Duration::from_millis(100)).await;
    println!("run {} after 100 ms:", handle.id());
    print_states(&handle.report());
    handle.cancel();
    match handle.wait().await {
        Ok(_) => println!("the run finished before it was cancelled"),
        Err(err) => {
            println!(
                "\n{} (cancelled: {})",
                jobgraph_examples::error_chain(&err),
                err.is_cancelled()
            );
            print_states(err.report());
        }
    }
    ExitCode::SUCCESS
}
