//! Command-line parsing and dispatch for the `warren` binary.
//!
//! Each subcommand is one variant of [`Command`] with its own argument struct
//! and module; to add one, add a variant, a module, and an arm in [`run`].

mod bench;
#[cfg(feature = "wire")]
mod serve;

use std::fmt;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// warren: an embeddable message broker engine with RabbitMQ's model.
#[derive(Debug, Parser)]
#[command(name = "warren", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands of the `warren` binary.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Benchmark topic routing: warren's compiled trie against a linear scan
    ///
    /// Routes keys through warren's compiled trie (TopicTrie) and through a
    /// linear scan of topic_matches over the same bindings, at each binding
    /// count. Without files, the workload is random: patterns of 3-6 words
    /// from a 100-word vocabulary (~10% `*`, ~5% `#`) and keys of 3-6 words.
    /// Prints a table (ns per routed key, routes/s, speedup, mean matches per
    /// key) and writes an SVG plot of cost against binding count. Build with
    /// --release for meaningful numbers: `cargo run --release -- bench`.
    Bench(bench::BenchArgs),
    /// Run warren as an AMQP 0-9-1 server (RabbitMQ clients connect unchanged)
    ///
    /// In memory, listening on 127.0.0.1:5672 with vhost `/` and user
    /// guest/guest (accepted from loopback only) unless a config file or
    /// --listen says otherwise. Stops on Ctrl-C.
    #[cfg(feature = "wire")]
    Serve(serve::ServeArgs),
}

/// A failure reported to the user as `error: <message>` with a non-zero exit
/// status. The message should say what went wrong and, where it helps, how to
/// fix it.
#[derive(Debug)]
pub struct CliError(String);

impl CliError {
    pub fn new(message: impl Into<String>) -> Self {
        CliError(message.into())
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CliError {}

pub type CliResult<T> = Result<T, CliError>;

/// Parses the command line and runs the chosen subcommand. Argument errors are
/// reported by clap (exit status 2); run-time errors print `error: ...` to
/// stderr and exit with status 1.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> CliResult<()> {
    match command {
        Command::Bench(args) => bench::run(&args),
        #[cfg(feature = "wire")]
        Command::Serve(args) => serve::run(&args),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
