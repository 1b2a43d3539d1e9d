//! The `warren` command-line tool.
//!
//! Subcommands live under `src/cli/`: `warren bench` benchmarks topic
//! routing (see `src/cli/bench/`). Run `warren --help` for the list.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    cli::main()
}
