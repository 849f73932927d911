//! `local-proxy` binary: command line, logging, signals; the work is in the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use shared::admin::client::{CtlCommand, StatusArgs};
use shared::cli::Cli;

mod ctl;
use local_proxy::{config, listeners};
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

#[derive(Parser)]
#[command(name = "local-proxy", version, about = "Home half of the multi-WAN ingress")]
struct Args {
    #[command(flatten)]
    cli: Cli<Args, Command>,
}

impl shared::cli::Binary for Args {
    const CONFIG: &'static str = "/etc/local-proxy/local-proxy.toml";
    const CONFIG_HELP: &'static str = "Configuration file (TOML); LOCAL_PROXY_* environment variables override it.";
}

#[derive(Subcommand)]
enum Command {
    /// Validate the configuration and exit.
    Check,
    /// The DNS-driven nftables allowlist.
    Firewall {
        #[command(subcommand)]
        what: FirewallCommand,
    },
    /// Talk to the running proxy through its admin listener (the config's `admin.listen`
    /// and `admin.token_file`).
    Ctl(CtlCommand<Ctl>),
}

#[derive(Subcommand)]
enum Ctl {
    /// Sites, streams and their upstreams, certificates, firewall (`--json`: the raw /status).
    Status(StatusArgs),
    /// Stop giving UPSTREAM (as configured: URL or address) of site or stream NAME new
    /// requests, connections and flows; open ones finish.
    Drain { name: String, upstream: String },
    /// Give the upstream new work again.
    Undrain { name: String, upstream: String },
    /// Set the upstream's weight (1-1000) until the config changes it, or `config` to drop
    /// the override.
    Weight { name: String, upstream: String, weight: String },
}

#[derive(Subcommand)]
enum FirewallCommand {
    /// Print our nftables table as the kernel holds it (read back over netlink).
    Show,
    /// Delete our nftables table (present or not). A stopped proxy leaves it in place, closed,
    /// on purpose; the package removes it with this when the package itself is removed.
    Remove {
        /// The proxy's state directory (the unit's StateDirectory=, /var/lib/local-proxy):
        /// also delete the table the last run recorded there (the config's table renamed, or
        /// `[firewall]` taken out, while it was stopped), then the record and its saved
        /// allowlist.
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
    },
}

/// `check`: the config, and the files the server will open as far as `check` can tell without
/// creating any (it may run as another user: Ansible's validate). The config's warnings, and
/// those of files not there yet that may come.
fn check(path: &Path) -> Result<(config::Config, Vec<config::FieldError>), config::ConfigError> {
    let c = config::load(path)?;
    let mut problems = config::Problems::new();
    let mut warnings = c.warnings.clone();
    local_proxy::tls::check_sources(&c.tls, &mut problems, &mut warnings);
    c.check_access_log_dirs(&mut problems);
    problems.into_result(()).map_err(config::ConfigError::Invalid)?;
    Ok((c, warnings))
}

fn main() -> ExitCode {
    let cli = Args::parse().cli;
    match cli.command {
        Some(Command::Firewall { what: FirewallCommand::Show }) => firewall_show(&cli.config),
        Some(Command::Firewall { what: FirewallCommand::Remove { state_dir } }) => {
            firewall_remove(&cli.config, state_dir.as_deref())
        }
        Some(Command::Ctl(c)) => ctl::run(&cli.config, c.admin, c.what),
        Some(Command::Check) => match check(&cli.config) {
            Ok((c, warnings)) => {
                for w in &warnings {
                    eprintln!("{}: warning: {w}", cli.config.display());
                }
                println!("{}: ok ({} sites, {} streams)", cli.config.display(), c.sites.len(), c.streams.len());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: {e}", cli.config.display());
                ExitCode::FAILURE
            }
        },
        None => {
            // The config first: it says how to log. Its errors go to stderr (journald).
            let config = match config::load(&cli.config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{}: {e}", cli.config.display());
                    return ExitCode::FAILURE;
                }
            };
            // LOCAL_PROXY_LOG (the config loader skips it, so it is not taken for a config key).
            shared::logging::init(config::LOG_ENV, config.log_format);
            let open_files = shared::open_files::raise();
            let wanted = config.descriptors_wanted();
            if wanted > open_files {
                // Past it, accepts and upstream connects fail with EMFILE (nginx warns alike).
                warn!(
                    open_files,
                    wanted,
                    max_connections = config.http.max_connections,
                    "the open-files limit is below what http.max_connections and the UDP streams' max_flows \
                     may need (raise LimitNOFILE / ulimit -n, or lower them)"
                );
            }
            config.log_warnings();
            // Before any thread starts: this clears LISTEN_FDS and friends from the environment.
            let (tcp, udp) = local_proxy::inherit::adopt_from_env();
            if tcp + udp > 0 {
                info!(tcp, udp, "sockets kept across the restart (systemd's descriptor store or socket units)");
            }
            // One event loop per thread (`shared::workers`): the main thread's and threads - 1
            // more; at threads = 1 the main thread alone.
            shared::runtime::serve_per_thread(config.threads, "local-proxy", |workers| {
                run(&cli.config, config, workers)
            })
        }
    }
}

/// The nftables table named by the config's `[firewall]` (or the default name), read without
/// validating the rest (`config::firewall_table`).
fn firewall_table(path: &Path) -> String {
    let (table, error) = config::firewall_table(path);
    if let Some(e) = error {
        eprintln!("{}: {e}; using the default table name `{table}`", path.display());
    }
    table
}

/// `firewall remove`: delete the table (no error when it is not there), and the one recorded
/// in `state_dir`.
fn firewall_remove(path: &Path, state_dir: Option<&Path>) -> ExitCode {
    let table = firewall_table(path);
    match local_proxy::firewall::remove_recorded(&table, state_dir) {
        Ok(tables) => {
            for t in tables {
                println!("table inet {t}: removed");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// `firewall show`: the table as the kernel holds it.
fn firewall_show(path: &Path) -> ExitCode {
    let table = firewall_table(path);
    match local_proxy::firewall::read_table(&table) {
        Ok(Some(t)) => {
            print!("{t}");
            let state = if t.enforcing() {
                "enforcing"
            } else {
                "OPEN (protected ports not filtered until a first DNS answer)"
            };
            println!("# {} allowed addresses; {state}", t.allowed().len());
            ExitCode::SUCCESS
        }
        Ok(None) => {
            eprintln!("table inet {table}: not present");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("reading table inet {table}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Tells systemd (`Type=notify`); a failure is logged, never fatal: the service works without.
fn notify(what: &str, result: std::io::Result<bool>) {
    if let Err(e) = result {
        warn!("sd_notify {what}: {e}");
    }
}

/// Keeps `systemctl status` showing a one-line summary (STATUS=, see `status::summary`):
/// sent when it changes, checked every 2 s.
async fn status_line(handle: local_proxy::app::Handle) {
    let mut last = String::new();
    loop {
        let line = local_proxy::status::summary(&handle.status());
        if line != last {
            notify("STATUS", shared::notify::notify(&format!("STATUS={line}")));
            last = line;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

async fn run(path: &Path, config: config::Config, workers: shared::workers::Workers) -> anyhow::Result<()> {
    // Handlers first: a signal during start-up waits for the loop below instead of meeting
    // its default action (SIGHUP and SIGTERM would end the process mid-start).
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    // SIGUSR1: reopen the access logs (logrotate's postrotate); SIGHUP does it too.
    let mut usr1 = signal(SignalKind::user_defined1())?;
    // systemd's watchdog over every event loop, and the tests' hook (TEST_WEDGE_RUNTIME_ON_SIGUSR2).
    shared::watchdog::start(&workers)?;
    let (mesh, mesh_later) = match listeners::mesh_address(&config).await {
        Ok(m) => (m, false),
        Err(e) => {
            // WAN service matters more than the mesh: start without it and keep asking.
            warn!(error = %e, "no mesh listener yet; retrying in the background");
            (None, true)
        }
    };
    // Kept sockets this config does not ask for are closed (mesh ones wait for the mesh
    // address), before any socket is bound anew: they may hold its port.
    let bound =
        listeners::bind_releasing(&config, mesh, || local_proxy::inherit::release_unclaimed(mesh_later)).await?;
    for b in &bound.tcp {
        if let Ok(addr) = b.listener.local_addr() {
            info!(listener = listeners::label(b.origin, &b.role), %addr, "listening");
        }
    }
    if let Some(addr) = bound.admin_addr() {
        info!(listener = "admin", %addr, "listening");
    }
    for b in &bound.udp {
        if let Ok(addr) = b.socket.local_addr() {
            info!(listener = "udp", stream = %b.stream, origin = %b.origin, %addr, "listening");
        }
    }
    let shutdown = CancellationToken::new();
    let server = local_proxy::start_on(config, bound, shutdown.clone(), workers)?;
    let handle = server.handle();
    if mesh_later {
        handle.serve_mesh_when_ready();
    }

    // Every configured listener is bound (listeners::bind above fails the start otherwise; the
    // mesh one may follow later, which is what `mesh_later` is for), and the signal handlers
    // are in place. READY=1 also waits (bounded) for the first round of every pool's active
    // checks, as the ingress does with its paths, so the first requests after it see the
    // checks' first answers (a failed one reduces the upstream's share; it goes down after
    // `fall` of them). A stop meanwhile goes straight to the drain.
    let path = path.to_path_buf();
    tokio::spawn(async move {
        let first_round = {
            let handle = handle.clone();
            async move {
                let done = || handle.first_round_done();
                shared::notify::wait_first_round(done, shared::notify::FIRST_ROUND_WAIT).await
            }
        };
        tokio::select! {
            _ = first_round => {}
            _ = term.recv() => { info!("SIGTERM: draining"); notify("STOPPING", shared::notify::stopping()); shutdown.cancel(); return; }
            _ = int.recv() => { info!("SIGINT: draining"); notify("STOPPING", shared::notify::stopping()); shutdown.cancel(); return; }
        }
        notify("READY", shared::notify::ready());
        if std::env::var_os(shared::notify::NOTIFY_SOCKET).is_some() {
            tokio::spawn(status_line(handle.clone()));
        }
        loop {
            tokio::select! {
                _ = hup.recv() => {
                    info!(config = %path.display(), "SIGHUP: reloading");
                    local_proxy::access_log::reopen();
                    notify("RELOADING", shared::notify::reloading());
                    match config::load(&path) {
                        Ok(new) => {
                            if let Err(e) = handle.reload(new).await {
                                error!(error = %e, "reload refused; the running config stays");
                            }
                        }
                        Err(e) => {
                            metrics::counter!(local_proxy::metrics::names::CONFIG_RELOADS, "result" => "invalid").increment(1);
                            error!("reload refused; the running config stays: {e}");
                        }
                    }
                    // Also after a refusal: systemd leaves the reloading state only on READY=1.
                    notify("READY", shared::notify::ready());
                }
                _ = usr1.recv() => {
                    info!("SIGUSR1: reopening access logs");
                    local_proxy::access_log::reopen();
                }
                _ = term.recv() => { info!("SIGTERM: draining"); notify("STOPPING", shared::notify::stopping()); shutdown.cancel(); return; }
                _ = int.recv() => { info!("SIGINT: draining"); notify("STOPPING", shared::notify::stopping()); shutdown.cancel(); return; }
            }
        }
    });
    // Established connections get up to the config's drain_timeout.
    server.wait_configured().await;
    info!("stopped");
    Ok(())
}
