//! `warren serve`: the AMQP 0-9-1 server (warren-wire) over an in-memory
//! broker.

use std::path::PathBuf;

use clap::Args;

use super::{CliError, CliResult};

/// Arguments of `warren serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// A TOML config file: listen address, vhosts, users, limits, memory
    /// watermark (see warren-wire's `ServeConfig`).
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// The address to listen on, overriding the config file
    /// (default 127.0.0.1:5672).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
}

/// Loads the configuration and serves until Ctrl-C.
pub fn run(args: &ServeArgs) -> CliResult<()> {
    let mut config = match &args.config {
        Some(path) => warren_wire::ServeConfig::load(path)
            .map_err(|e| CliError::new(format!("{}: {e}", path.display())))?,
        None => warren_wire::ServeConfig::default(),
    };
    if let Some(listen) = &args.listen {
        config.listen = listen.clone();
    }
    warren_wire::blocking_serve(config).map_err(|e| CliError::new(format!("serve: {e}")))
}
