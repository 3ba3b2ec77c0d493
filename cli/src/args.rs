//! The command line: global options and one subcommand per operation.

use clap::{Args, Parser, Subcommand};
use jobgraph::store::RunState;

const EXAMPLES: &str = "\
Examples:
  jobgraph --store sqlite://jobs.db runs --state failed
  jobgraph --store jobs.db show import-7
  jobgraph --store jobs.db dot import-7 | dot -Tsvg > import-7.svg
  jobgraph --store jobs.db gantt import-7
  jobgraph --store jobs.db redrive import-7 orders
  jobgraph --store jobs.db redrive --failed orders --job Import
  jobgraph --store jobs.db workers
  jobgraph --store jobs.db abort --batch nightly
  jobgraph --store postgres://jobs@db.internal/jobs runs --job Import

Exit codes: 0 done, 1 error, 2 usage error.";

/// List, inspect, draw and redrive the durable runs of a jobgraph store.
#[derive(Parser, Debug)]
#[command(name = "jobgraph", version, after_help = EXAMPLES)]
pub(crate) struct Cli {
    /// The store: `sqlite://jobs.db` (relative), `sqlite:///var/lib/jobs.db` (absolute) or a path
    /// to the database file; or a PostgreSQL database, `postgres://user:password@host/database`.
    #[arg(long, global = true, env = "JOBGRAPH_STORE", value_name = "URL")]
    pub(crate) store: Option<String>,

    /// Print JSON for scripts instead of tables.
    #[arg(long, global = true)]
    pub(crate) json: bool,

    /// What to do.
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// The operations.
#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// List runs, newest first: id, job, state, batch, last update and step tallies.
    Runs(RunsArgs),
    /// Show a run and a table of its steps: state, attempts, duration, error.
    Show {
        /// The run's id.
        id: String,
    },
    /// Print a run as Graphviz DOT, each step coloured by its state (pipe it to `dot -Tsvg`).
    Dot {
        /// The run's id.
        id: String,
    },
    /// Print a run as a Mermaid Gantt chart: a bar per step that ran, at wall-clock times.
    Gantt {
        /// The run's id.
        id: String,
    },
    /// Reset a step and every step that depends on it, so that the next resume runs them again:
    /// in one run (`redrive ID STEP`), or in every run of a job where that step failed
    /// (`redrive --failed STEP --job JOB`).
    Redrive(RedriveArgs),
    /// List the leases held now: the steps each worker has claimed (an element of a `for_each`
    /// step as `step[i]`), and the runs durable runners hold, until when.
    Workers,
    /// Abort a submitted run (`abort ID`) or every run of a batch (`abort --batch NAME`): steps
    /// not started never start, running ones are cancelled at their worker's next heartbeat.
    Abort(AbortArgs),
}

/// `jobgraph abort`.
#[derive(Args, Debug)]
pub(crate) struct AbortArgs {
    /// The run.
    #[arg(required_unless_present = "batch", conflicts_with = "batch")]
    pub(crate) id: Option<String>,
    /// Abort every run of this batch that has not ended.
    #[arg(long, value_name = "NAME")]
    pub(crate) batch: Option<String>,
}

/// `jobgraph runs`.
#[derive(Args, Debug)]
pub(crate) struct RunsArgs {
    /// Only runs of this job (its name, as `runs` lists it).
    #[arg(long)]
    pub(crate) job: Option<String>,
    /// Only runs in this state: pending, running, succeeded, failed or cancelled.
    #[arg(long)]
    pub(crate) state: Option<RunState>,
    /// Only runs of this batch.
    #[arg(long)]
    pub(crate) batch: Option<String>,
    /// At most this many runs, the newest; 0 lists them all.
    #[arg(long, default_value_t = 50)]
    pub(crate) limit: usize,
}

/// `jobgraph redrive`.
#[derive(Args, Debug)]
pub(crate) struct RedriveArgs {
    /// The run.
    #[arg(required_unless_present = "failed", conflicts_with = "failed")]
    pub(crate) id: Option<String>,
    /// The step to reset, with every step that depends on it.
    #[arg(required_unless_present = "failed", conflicts_with = "failed")]
    pub(crate) step: Option<String>,
    /// Redrive every run of `--job` in which this step failed.
    #[arg(long, value_name = "STEP", requires = "job")]
    pub(crate) failed: Option<String>,
    /// The job whose runs `--failed` redrives (its name, as `runs` lists it).
    #[arg(long, requires = "failed")]
    pub(crate) job: Option<String>,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn redrive_takes_a_run_and_step_or_failed_and_job() {
        let one = Cli::try_parse_from(["jobgraph", "redrive", "r1", "parse"]).unwrap();
        let Command::Redrive(args) = one.command else {
            panic!("not a redrive")
        };
        assert_eq!(
            (args.id.as_deref(), args.step.as_deref()),
            (Some("r1"), Some("parse"))
        );
        let all = Cli::try_parse_from(["jobgraph", "redrive", "--failed", "parse", "--job", "J"])
            .unwrap();
        let Command::Redrive(args) = all.command else {
            panic!("not a redrive")
        };
        assert_eq!(
            (args.failed.as_deref(), args.job.as_deref()),
            (Some("parse"), Some("J"))
        );
        for bad in [
            &["jobgraph", "redrive", "r1"][..],
            &["jobgraph", "redrive", "--failed", "parse"],
            &[
                "jobgraph", "redrive", "r1", "parse", "--failed", "parse", "--job", "J",
            ],
        ] {
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn states_are_parsed() {
        let cli = Cli::try_parse_from(["jobgraph", "runs", "--state", "failed"]).unwrap();
        let Command::Runs(args) = cli.command else {
            panic!("not runs")
        };
        assert_eq!(args.state, Some(RunState::Failed));
        let err = Cli::try_parse_from(["jobgraph", "runs", "--state", "broken"]).unwrap_err();
        assert!(
            err.to_string()
                .contains("pending, running, succeeded, failed or cancelled")
        );
    }
}
