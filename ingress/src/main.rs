//! `ingress`: parse arguments, set up logging and signals, load the config, serve.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ingress::{Config, Server};
use tokio::signal::unix::{signal, SignalKind};

#[derive(Parser)]
#[command(version, about = "Multi-WAN ingress load balancer with Yggdrasil mesh fallback")]
struct Cli {
    /// Config file (TOML). Environment overrides: INGRESS_<SECTION>__<KEY>.
    #[arg(short, long, global = true, default_value = "/etc/ingress/ingress.toml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the config and exit: 0 when valid, 1 with every problem listed otherwise.
    Check,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(log_filter())
        .with_target(false)
        // Colour only on a terminal: journald and log files get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let config = match Config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(Command::Check) = cli.command {
        println!("{}: ok ({} pool(s), {} service(s))", cli.config.display(), config.pools.len(), config.services.len());
        return ExitCode::SUCCESS;
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli.config, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The log filter: `INGRESS_LOG`, else the usual `RUST_LOG`, else `info`. A value that does not
/// parse is reported and skipped rather than silently ignored.
fn log_filter() -> tracing_subscriber::EnvFilter {
    for var in ["INGRESS_LOG", "RUST_LOG"] {
        if let Some(spec) = std::env::var_os(var) {
            let spec = spec.to_string_lossy();
            match tracing_subscriber::EnvFilter::try_new(&*spec) {
                Ok(filter) => return filter,
                Err(e) => eprintln!("{var}={spec:?} ignored: {e}"),
            }
        }
    }
    tracing_subscriber::EnvFilter::new("info")
}

/// Tells systemd (`Type=notify`); a failure is logged, never fatal: the service works without.
fn notify(what: &str, result: std::io::Result<bool>) {
    if let Err(e) = result {
        tracing::warn!("sd_notify {what}: {e}");
    }
}

async fn run(path: PathBuf, config: Config) -> anyhow::Result<()> {
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    // Start binds every listener (a failed bind is logged by the server), so this is "ready".
    let server = Server::start(config).await;
    tracing::info!(config = %path.display(), "ingress running");
    notify("READY", shared::notify::ready());
    loop {
        tokio::select! {
            _ = hup.recv() => {
                notify("RELOADING", shared::notify::reloading());
                match Config::load(&path) {
                    Ok(c) => server.reload(c),
                    Err(e) => {
                        metrics::counter!(ingress::metrics::RELOADS, "result" => "refused").increment(1);
                        tracing::error!("reload refused, the running config stays: {e}");
                    }
                }
                // Also after a refusal: systemd leaves the reloading state only on READY=1.
                notify("READY", shared::notify::ready());
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    notify("STOPPING", shared::notify::stopping());
    let deadline = server.shared().runtime().config.drain_timeout;
    tracing::info!(open = server.shared().open_connections(), deadline = ?deadline, "draining");
    let left = server.drain(deadline).await;
    if left > 0 {
        tracing::warn!(left, "drain deadline passed; closing remaining connections");
    } else {
        tracing::info!("drained; bye");
    }
    Ok(())
}
