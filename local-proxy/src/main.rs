//! `local-proxy` binary: command line, logging, signals; the work is in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "local-proxy",
    version,
    about = "Home half of the multi-WAN ingress"
)]
struct Cli {
    /// Configuration file (TOML); LOCAL_PROXY_* environment variables override it.
    #[arg(
        short,
        long,
        global = true,
        default_value = "/etc/local-proxy/local-proxy.toml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the configuration and exit.
    Check,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Check) => match local_proxy::config::load(&cli.config) {
            Ok(config) => {
                println!(
                    "{}: ok ({} sites, {} streams)",
                    cli.config.display(),
                    config.sites.len(),
                    config.streams.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: {e}", cli.config.display());
                ExitCode::FAILURE
            }
        },
        None => ExitCode::SUCCESS,
    }
}
