//! `jobgraph`: the operators' command over a store of durable runs. Lists runs, shows a run's
//! steps, draws a run (DOT, Mermaid Gantt) and redrives steps so the next resume runs them again.
//!
//! Exit codes: 0 when done, 1 on an error (the message says what to do), 2 on a usage error.

mod args;
mod commands;
mod failure;
mod store_url;
mod table;
mod text;

use std::io::{ErrorKind, Write as _};
use std::process::ExitCode;

use clap::{CommandFactory as _, Parser as _};

use crate::args::Cli;
use crate::failure::Failure;

fn main() -> ExitCode {
    // A usage error exits here with code 2 (and `--help`, `--version` with 0).
    let cli = Cli::parse();
    let Some(store) = cli.store.clone() else {
        Cli::command()
            .error(
                clap::error::ErrorKind::MissingRequiredArgument,
                "no store given: pass `--store URL` (e.g. `--store sqlite://jobs.db`, or a path) \
                 or set JOBGRAPH_STORE",
            )
            .exit();
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            return fail(&Failure::new(format!(
                "cannot start the async runtime: {e}"
            )));
        }
    };
    let output = runtime.block_on(commands::run(&cli, &store));
    // Whatever the command printed is written even if it then failed (e.g. a redrive of many
    // runs that reset some and not others).
    if let Err(e) = std::io::stdout().lock().write_all(output.stdout.as_bytes()) {
        // `jobgraph runs | head`: the reader left; that is not an error of ours.
        if e.kind() != ErrorKind::BrokenPipe {
            return fail(&Failure::new(format!(
                "cannot write to standard output: {e}"
            )));
        }
    }
    if !output.notes.is_empty() {
        let _ = std::io::stderr().lock().write_all(output.notes.as_bytes());
    }
    match output.result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => fail(&failure),
    }
}

fn fail(failure: &Failure) -> ExitCode {
    let _ = writeln!(std::io::stderr().lock(), "error: {failure}");
    ExitCode::FAILURE
}
