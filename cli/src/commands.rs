//! The commands, over any [`Store`]: each builds what it prints, so `main` writes it once.

use std::fmt::Write as _;

use jobgraph::store::queue::Queue;
use jobgraph::store::{RunFilter, Store, StoreError, StoredRun};
use serde::Serialize;

use crate::args::{AbortArgs, Cli, Command, RedriveArgs, RunsArgs};
use crate::failure::Failure;
use crate::store_url;
use crate::table::Table;
use crate::text::{clean, cut, duration, tally, utc};

/// What a command printed, and how it ended.
#[derive(Debug)]
pub(crate) struct Output {
    /// For standard output: the table, the JSON, the chart.
    pub(crate) stdout: String,
    /// For standard error: notes for the operator (a cut listing, an empty result).
    pub(crate) notes: String,
    /// Whether the command did all it was asked.
    pub(crate) result: Result<(), Failure>,
}

/// What the command's context says about printing.
struct Ctx<'a> {
    store: &'a dyn Store,
    /// The store's queue of submitted runs.
    queue: &'a dyn Queue,
    /// The `--store` URL, for the commands a message suggests.
    url: &'a str,
    json: bool,
    /// The terminal's width, if known: tables are cut to it.
    width: Option<usize>,
    out: String,
    notes: String,
}

/// Opens the store and runs the command.
pub(crate) async fn run(cli: &Cli, url: &str) -> Output {
    let store = match store_url::open(url).await {
        Ok(store) => store,
        Err(failure) => {
            return Output {
                stdout: String::new(),
                notes: String::new(),
                result: Err(failure),
            };
        }
    };
    // Messages show the URL without its password.
    let shown = store_url::shown(url);
    let output = run_on(store.store(), store.queue(), &shown, cli, terminal_width()).await;
    store.close().await;
    output
}

/// Runs the command on `store` (`url` names it in messages).
pub(crate) async fn run_on(
    store: &dyn Store,
    queue: &dyn Queue,
    url: &str,
    cli: &Cli,
    width: Option<usize>,
) -> Output {
    let mut ctx = Ctx {
        store,
        queue,
        url,
        json: cli.json,
        width,
        out: String::new(),
        notes: String::new(),
    };
    let result = match &cli.command {
        Command::Runs(args) => runs(&mut ctx, args).await,
        Command::Show { id } => show(&mut ctx, id).await,
        Command::Dot { id } => draw(&mut ctx, id, "dot", StoredRun::dot).await,
        Command::Gantt { id } => draw(&mut ctx, id, "gantt", StoredRun::mermaid_gantt).await,
        Command::Redrive(args) => redrive(&mut ctx, args).await,
        Command::Workers => workers(&mut ctx).await,
        Command::Abort(args) => abort(&mut ctx, args).await,
    };
    Output {
        stdout: ctx.out,
        notes: ctx.notes,
        result,
    }
}

/// `COLUMNS` if set (a script's choice), else the width of the terminal on standard output;
/// `None` when writing to a pipe or a file: nothing is cut.
fn terminal_width() -> Option<usize> {
    if let Some(columns) = std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.trim().parse::<usize>().ok())
        .filter(|&c| c > 0)
    {
        return Some(columns);
    }
    terminal_size::terminal_size_of(std::io::stdout())
        .map(|(terminal_size::Width(w), _)| usize::from(w))
}

impl Ctx<'_> {
    fn json(&mut self, value: &impl Serialize) -> Result<(), Failure> {
        let text = serde_json::to_string_pretty(value)
            .map_err(|e| Failure::new(format!("cannot write JSON: {e}")))?;
        self.out.push_str(&text);
        self.out.push('\n');
        Ok(())
    }

    /// A store's error, with what to do in this command's terms.
    fn explain(&self, error: StoreError) -> Failure {
        let url = shell_word(self.url);
        match error {
            StoreError::NoSuchRun { run } => Failure::new(format!(
                "no run `{run}` in the store `{url}`; `jobgraph --store {url} runs` lists its runs \
                 (narrow them with --job, --state or --batch)"
            )),
            StoreError::Busy { run, owner, until } => Failure::new(busy(&run, &owner, until)),
            error => Failure::chain(&error),
        }
    }

    async fn load(&self, id: &str) -> Result<StoredRun, Failure> {
        match self.store.load_run(id).await {
            Ok(Some(run)) => Ok(run),
            Ok(None) => Err(self.explain(StoreError::NoSuchRun { run: id.to_owned() })),
            Err(e) => Err(self.explain(e)),
        }
    }
}

/// Who holds a run, until when, and what to do.
fn busy(run: &str, owner: &str, until: i64) -> String {
    let left = until.saturating_sub(now_ms()).max(0);
    format!(
        "run `{}` is being executed by `{}`, whose lease runs until {} UTC (in {}); wait for that \
         runner to finish (or, if it died, for its lease to expire), then redrive again",
        clean(run),
        clean(owner),
        utc(until),
        duration(std::time::Duration::from_millis(left.unsigned_abs()))
    )
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// `jobgraph runs`.
async fn runs(ctx: &mut Ctx<'_>, args: &RunsArgs) -> Result<(), Failure> {
    let limit = (args.limit > 0).then_some(args.limit);
    let filter = RunFilter {
        job: args.job.clone(),
        state: args.state,
        batch: args.batch.clone(),
        // One more than shown, to say whether the listing was cut.
        limit: limit.map(|l| l.saturating_add(1)),
    };
    let mut runs = ctx
        .store
        .list_runs(&filter)
        .await
        .map_err(|e| ctx.explain(e))?;
    let cut_off = limit.is_some_and(|l| runs.len() > l);
    if let Some(l) = limit {
        runs.truncate(l);
    }
    if cut_off {
        let _ = writeln!(
            ctx.notes,
            "(the newest {} runs; `--limit N` shows more, `--limit 0` all)",
            runs.len()
        );
    }
    if ctx.json {
        return ctx.json(&runs);
    }
    if runs.is_empty() {
        let filtered = args.job.is_some() || args.state.is_some() || args.batch.is_some();
        let _ = writeln!(
            ctx.notes,
            "{}",
            if filtered {
                "no runs match these filters"
            } else {
                "no runs in this store yet"
            }
        );
        return Ok(());
    }
    let mut table = Table::new(&["~ID", "~JOB", "STATE", "~BATCH", "UPDATED (UTC)", "~STEPS"]);
    for run in &runs {
        table.row(vec![
            run.id.clone(),
            run.job.clone(),
            run.state.to_string(),
            run.batch.clone().unwrap_or_else(|| "-".to_owned()),
            utc(run.updated_at),
            tally(&run.steps),
        ]);
    }
    ctx.out.push_str(&table.render(ctx.width));
    Ok(())
}

/// `jobgraph workers`.
async fn workers(ctx: &mut Ctx<'_>) -> Result<(), Failure> {
    let leases = ctx.queue.leases().await.map_err(|e| ctx.explain(e))?;
    if ctx.json {
        return ctx.json(&leases);
    }
    if leases.is_empty() {
        let _ = writeln!(
            ctx.notes,
            "no lease is held: no worker or runner is running anything"
        );
        return Ok(());
    }
    let now = now_ms();
    let mut table = Table::new(&[
        "~HOLDER",
        "~RUN",
        "~STEP",
        "+CLAIM",
        "LEASE UNTIL (UTC)",
        "LEFT",
    ]);
    for lease in &leases {
        let left = lease.until - now;
        table.row(vec![
            lease.holder.clone(),
            lease.run.clone(),
            match (&lease.step, lease.element) {
                (Some(step), Some(element)) => format!("{step}[{element}]"),
                (Some(step), None) => step.clone(),
                (None, _) => "(whole run)".to_owned(),
            },
            lease.attempt.map(|a| a.to_string()).unwrap_or_default(),
            utc(lease.until),
            if left > 0 {
                duration(std::time::Duration::from_millis(left.unsigned_abs()))
            } else {
                "expired".to_owned()
            },
        ]);
    }
    ctx.out.push_str(&table.render(ctx.width));
    Ok(())
}

/// `jobgraph abort ID` and `jobgraph abort --batch NAME`.
async fn abort(ctx: &mut Ctx<'_>, args: &AbortArgs) -> Result<(), Failure> {
    let queue = ctx.queue;
    let (what, count) = match (&args.id, &args.batch) {
        (_, Some(batch)) => {
            let n = queue.abort_batch(batch).await.map_err(|e| ctx.explain(e))?;
            (format!("batch `{}`", clean(batch)), n)
        }
        (Some(id), None) => {
            let aborted = queue.abort(id).await.map_err(|e| ctx.explain(e))?;
            (format!("run `{}`", clean(id)), u64::from(aborted))
        }
        (None, None) => unreachable!("clap requires an id or --batch"),
    };
    if ctx.json {
        return ctx.json(&serde_json::json!({ "aborted": count }));
    }
    let _ = match count {
        0 => writeln!(
            ctx.out,
            "{what}: nothing to abort, every run had already ended"
        ),
        1 => writeln!(ctx.out, "{what}: aborted 1 run"),
        n => writeln!(ctx.out, "{what}: aborted {n} runs"),
    };
    Ok(())
}

/// `jobgraph show ID`.
async fn show(ctx: &mut Ctx<'_>, id: &str) -> Result<(), Failure> {
    let run = ctx.load(id).await?;
    if ctx.json {
        return ctx.json(&run);
    }
    let line = |label: &str, value: &str| {
        let text = format!("{label:<8} {}", clean(value));
        match ctx.width {
            Some(w) => cut(&text, w),
            None => text,
        }
    };
    let mut head = vec![
        line("run", &run.id),
        line("job", &run.job),
        line("state", run.state.as_str()),
    ];
    if let Some(batch) = &run.batch {
        head.push(line("batch", batch));
    }
    if let Some(error) = &run.error {
        head.push(line("error", error));
    }
    head.push(line("created", &format!("{} UTC", utc(run.created_at))));
    head.push(line("updated", &format!("{} UTC", utc(run.updated_at))));
    head.push(line("steps", &tally(&run.tally())));
    for l in head {
        ctx.out.push_str(&l);
        ctx.out.push('\n');
    }
    ctx.out.push('\n');
    let mut table = Table::new(&["~STEP", "STATE", "+ATTEMPTS", "+DURATION", "~ERROR"]);
    for step in &run.steps {
        let error = match (&step.error, run.skipped_because(&step.name)) {
            (Some(e), _) => e.clone(),
            (None, Some(because)) => format!("(`{because}` failed)"),
            (None, None) => String::new(),
        };
        table.row(vec![
            step.name.clone(),
            step.state.to_string(),
            if step.attempts > 0 {
                step.attempts.to_string()
            } else {
                String::new()
            },
            step.duration().map(duration).unwrap_or_default(),
            error,
        ]);
    }
    ctx.out.push_str(&table.render(ctx.width));
    Ok(())
}

/// `jobgraph dot ID` and `jobgraph gantt ID`.
async fn draw(
    ctx: &mut Ctx<'_>,
    id: &str,
    key: &'static str,
    render: fn(&StoredRun) -> String,
) -> Result<(), Failure> {
    let run = ctx.load(id).await?;
    let text = render(&run);
    if ctx.json {
        #[derive(Serialize)]
        struct Drawing<'a> {
            run: &'a str,
            format: &'static str,
            text: &'a str,
        }
        return ctx.json(&Drawing {
            run: &run.id,
            format: key,
            text: &text,
        });
    }
    ctx.out.push_str(&text);
    Ok(())
}

/// One run's redrive, as `--json` prints it.
#[derive(Serialize, Debug)]
struct Reset {
    run: String,
    job: String,
    /// The steps reset, in graph order.
    reset: Vec<String>,
}

/// A run `redrive --failed` could not reset.
#[derive(Serialize, Debug)]
struct NotReset {
    run: String,
    error: String,
}

/// `jobgraph redrive ...`.
async fn redrive(ctx: &mut Ctx<'_>, args: &RedriveArgs) -> Result<(), Failure> {
    match (&args.id, &args.step, &args.failed, &args.job) {
        (Some(id), Some(step), None, None) => redrive_one(ctx, id, step).await,
        (None, None, Some(step), Some(job)) => redrive_failed(ctx, job, step).await,
        // clap's rules (`required_unless_present`, `conflicts_with`, `requires`) leave no other
        // case; say so rather than panic.
        _ => Err(Failure::new(
            "redrive takes `ID STEP` or `--failed STEP --job JOB`; see `jobgraph redrive --help`",
        )),
    }
}

/// How to resume a redriven run: the job type's runner, in the operator's program.
fn resume_hint(job: &str, id: &str) -> String {
    format!(
        "resume it from the program that runs job `{job}`: run it again with job id `{id}`, or \
         call `jobgraph::durable::resume::<{job}>(&store, {id:?})`"
    )
}

async fn redrive_one(ctx: &mut Ctx<'_>, id: &str, step: &str) -> Result<(), Failure> {
    // Loaded first: an unknown run or step gets an answer naming what exists.
    let run = ctx.load(id).await?;
    if run.step(step).is_none() {
        let names: Vec<&str> = run.steps.iter().map(|s| s.name.as_str()).collect();
        return Err(Failure::new(format!(
            "run `{id}` (job `{}`) has no step `{step}`; its steps are: {}",
            run.job,
            names.join(", ")
        )));
    }
    let reset = ctx
        .store
        .reset_step(id, step)
        .await
        .map_err(|e| ctx.explain(e))?;
    if ctx.json {
        return ctx.json(&Reset {
            run: run.id,
            job: run.job,
            reset,
        });
    }
    let _ = writeln!(
        ctx.out,
        "reset {} of run `{}` (job `{}`): {}",
        plural(reset.len(), "step"),
        clean(id),
        clean(&run.job),
        clean(&reset.join(", "))
    );
    let _ = writeln!(ctx.out, "{}", clean(&resume_hint(&run.job, id)));
    Ok(())
}

async fn redrive_failed(ctx: &mut Ctx<'_>, job: &str, step: &str) -> Result<(), Failure> {
    let ids = ctx
        .store
        .runs_where_failed(job, step)
        .await
        .map_err(|e| ctx.explain(e))?;
    if ids.is_empty() {
        return nothing_failed(ctx, job, step).await;
    }
    let (mut done, mut not_done) = (Vec::new(), Vec::new());
    for id in ids {
        match ctx.store.reset_step(&id, step).await {
            Ok(reset) => done.push(Reset {
                run: id,
                job: job.to_owned(),
                reset,
            }),
            Err(e) => {
                let error = ctx.explain(e).to_string();
                not_done.push(NotReset { run: id, error });
            }
        }
    }
    if ctx.json {
        #[derive(Serialize)]
        struct Redrive<'a> {
            job: &'a str,
            step: &'a str,
            reset: &'a [Reset],
            not_reset: &'a [NotReset],
        }
        ctx.json(&Redrive {
            job,
            step,
            reset: &done,
            not_reset: &not_done,
        })?;
    } else {
        for r in &done {
            let _ = writeln!(
                ctx.out,
                "reset run `{}`: {}",
                clean(&r.run),
                clean(&r.reset.join(", "))
            );
        }
        for n in &not_done {
            let _ = writeln!(ctx.out, "not reset: run `{}`: {}", clean(&n.run), n.error);
        }
        let _ = writeln!(
            ctx.out,
            "redrove {} of job `{}` where `{}` failed; resume them from the program that runs \
             job `{}` (`jobgraph::durable::resume::<{}>(&store, id)` for each, or resume their \
             batch)",
            plural(done.len(), "run"),
            clean(job),
            clean(step),
            clean(job),
            clean(job)
        );
    }
    if not_done.is_empty() {
        Ok(())
    } else {
        Err(Failure::new(format!(
            "{} not reset (listed above); redrive again once their runners have finished: \
             `jobgraph --store {} redrive --failed {} --job {}`",
            plural(not_done.len(), "run was"),
            shell_word(ctx.url),
            shell_word(step),
            shell_word(job)
        )))
    }
}

/// No run of `job` has `step` failed: fine, unless the job or its step does not exist (a typo).
async fn nothing_failed(ctx: &mut Ctx<'_>, job: &str, step: &str) -> Result<(), Failure> {
    let url = shell_word(ctx.url);
    let filter = RunFilter {
        job: Some(job.to_owned()),
        limit: Some(1),
        ..RunFilter::default()
    };
    let latest = ctx
        .store
        .list_runs(&filter)
        .await
        .map_err(|e| ctx.explain(e))?;
    let Some(latest) = latest.first() else {
        return Err(Failure::new(format!(
            "no runs of job `{job}` in the store `{url}`; `jobgraph --store {url} runs` lists the \
             runs and their jobs"
        )));
    };
    let run = ctx.load(&latest.id).await?;
    if run.graph.position(step).is_none() && run.step(step).is_none() {
        let names: Vec<&str> = run.steps.iter().map(|s| s.name.as_str()).collect();
        return Err(Failure::new(format!(
            "job `{job}` has no step `{step}` (its newest run's steps are: {})",
            names.join(", ")
        )));
    }
    if ctx.json {
        return ctx.json(&serde_json::json!({
            "job": job, "step": step, "reset": [], "not_reset": [],
        }));
    }
    let _ = writeln!(
        ctx.notes,
        "no run of job `{}` has a failed `{}` step: nothing to redrive",
        clean(job),
        clean(step)
    );
    Ok(())
}

/// `s` as one word of a POSIX shell command a message suggests: as is if it is plain, else in
/// single quotes.
fn shell_word(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._:+-=@,%".contains(c));
    if plain {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// `1 step`, `3 steps`; `1 run was`, `2 runs were`.
fn plural(n: usize, what: &str) -> String {
    match (n, what.split_once(' ')) {
        (1, _) => format!("1 {what}"),
        (_, Some((noun, "was"))) => format!("{n} {noun}s were"),
        _ => format!("{n} {what}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plurals() {
        assert_eq!(plural(1, "step"), "1 step");
        assert_eq!(plural(3, "step"), "3 steps");
        assert_eq!(plural(0, "run"), "0 runs");
        assert_eq!(plural(1, "run was"), "1 run was");
        assert_eq!(plural(2, "run was"), "2 runs were");
    }

    #[test]
    fn suggested_commands_quote_their_words() {
        assert_eq!(shell_word("sqlite://jobs.db"), "sqlite://jobs.db");
        assert_eq!(shell_word("/tmp/my jobs.db"), "'/tmp/my jobs.db'");
        assert_eq!(shell_word("it's"), r"'it'\''s'");
        assert_eq!(shell_word(""), "''");
    }

    #[test]
    fn busy_says_who_until_when_and_what_to_do() {
        let text = busy("r1", "host-1/42", 0);
        assert!(
            text.contains("`host-1/42`, whose lease runs until 1970-01-01 00:00:00 UTC (in 0 ms)"),
            "{text}"
        );
        assert!(text.contains("wait for that runner to finish"), "{text}");
    }
}
