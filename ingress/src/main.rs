//! `ingress`: parse arguments, set up logging and signals, load the config, serve.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use ingress::config::Protocol;
use shared::admin::client::{CtlCommand, StatusArgs};
use shared::cli::Cli;

mod ctl;
use ingress::{Config, Server};
use tokio::signal::unix::{signal, Signal, SignalKind};

#[derive(Parser)]
#[command(version, about = "Multi-WAN ingress load balancer with Yggdrasil mesh fallback")]
struct Args {
    #[command(flatten)]
    cli: Cli<Args, Command>,
}

impl shared::cli::Binary for Args {
    const CONFIG: &'static str = "/etc/ingress/ingress.toml";
    const CONFIG_HELP: &'static str = "Config file (TOML). Environment overrides: INGRESS_<SECTION>__<KEY>.";
}

#[derive(Subcommand)]
enum Command {
    /// Validate the config and exit: 0 when valid, 1 with every problem listed otherwise.
    Check,
    /// Talk to the running ingress through its admin listener (the config's `admin.listen`
    /// and `admin.token_file`).
    Ctl(CtlCommand<Ctl>),
}

#[derive(Subcommand)]
enum Ctl {
    /// Every pool's paths: state, weight, share, connections (`--json`: the raw /status).
    Status(StatusArgs),
    /// Stop giving PATH ([POOL/]NAME) new connections and flows; open ones finish.
    Drain { path: String },
    /// Give PATH new connections again.
    Undrain { path: String },
    /// Set PATH's weight (1-1000) until the config changes it, or `config` to drop the override.
    Weight { path: String, weight: String },
}

fn main() -> ExitCode {
    let cli = Args::parse().cli;
    if let Some(Command::Ctl(c)) = cli.command {
        // Reads only [admin]: the rest need not be valid, nor the token readable to look.
        return ctl::run(&cli.config, c.admin, c.what);
    }
    let config = match Config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Some(Command::Check) => {
            for w in &config.warnings {
                eprintln!("{}: warning: {w}", cli.config.display());
            }
            println!(
                "{}: ok ({} pool(s), {} service(s))",
                cli.config.display(),
                config.pools.len(),
                config.services.len()
            );
            return ExitCode::SUCCESS;
        }
        Some(Command::Ctl(_)) | None => {}
    }
    shared::logging::init("INGRESS_LOG", config.log_format);
    log_warnings(&config);
    // Before any thread starts: this clears LISTEN_FDS and friends from the environment.
    let (tcp, udp) = shared::inherit::adopt_from_env();
    if tcp + udp > 0 {
        tracing::info!(tcp, udp, "sockets kept across the restart (systemd's descriptor store or socket units)");
    }
    // `limits.threads` event loops (operators match HAProxy's nbthread with it): the calling
    // thread's, which accepts and runs everything but TCP connections, and one more per
    // extra thread; connections are spread over all of them.
    let threads = config.threads;
    shared::runtime::serve_per_thread(threads, "ingress-worker", |workers| run(cli.config, config, workers))
}

/// What the config passes with but may not mean (`Config::warnings`).
fn log_warnings(config: &Config) {
    for w in &config.warnings {
        tracing::warn!(field = %w.field, "configuration: {}", w.message);
    }
}

/// Reloads on SIGHUP until SIGTERM or SIGINT.
async fn serve(server: &Server, path: &Path, hup: &mut Signal, term: &mut Signal, int: &mut Signal) {
    loop {
        tokio::select! {
            _ = hup.recv() => {
                notify("RELOADING", shared::notify::reloading());
                let applied = match Config::load(path) {
                    Ok(c) => {
                        log_warnings(&c);
                        let want = expected_listeners(&c);
                        match server.try_reload(c).await {
                            Ok(()) => {
                                // Bounded: signals wait meanwhile, and a port that stays taken is
                                // retried in the background (logged) rather than holding the reload.
                                wait_bound(server, &want, Some(RELOAD_BIND_WAIT)).await;
                                Ok(())
                            }
                            // Refused: the running config stays (a listener closed early to
                            // make room binds again in the background, as at start-up).
                            Err(e) => Err(e.to_string()),
                        }
                    }
                    Err(e) => {
                        metrics::counter!(ingress::metrics::RELOADS, "result" => "refused").increment(1);
                        Err(e.to_string())
                    }
                };
                if let Err(e) = &applied {
                    tracing::error!("reload refused, the running config stays: {e}");
                }
                // Shown in `systemctl status` (`status_line`) until a reload is applied.
                *LAST_REFUSAL.lock().unwrap_or_else(|p| p.into_inner()) = applied.err();
                // Also after a refusal: systemd leaves the reloading state only on READY=1.
                notify("READY", shared::notify::ready());
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
}

/// How long a reload waits for its new listeners before it reports READY=1 anyway.
const RELOAD_BIND_WAIT: Duration = Duration::from_secs(5);

/// How many distinct listeners each service asks for, keyed as the server keys them
/// (protocol and address; port 0 once per service), so it matches `Server::local_addrs`.
fn expected_listeners(config: &Config) -> Vec<(String, usize)> {
    let mut owner: HashMap<(Protocol, String), &str> = HashMap::new();
    for svc in &config.services {
        for addr in svc.listen.iter().flat_map(|spec| spec.addrs()) {
            let key = if addr.port() == 0 { format!("{addr}#{}", svc.name) } else { addr.to_string() };
            owner.insert((svc.protocol, key), &svc.name);
        }
    }
    let mut count: HashMap<&str, usize> = HashMap::new();
    for name in owner.into_values() {
        *count.entry(name).or_default() += 1;
    }
    count.into_iter().map(|(name, n)| (name.to_string(), n)).collect()
}

/// Waits until every service has all its listeners bound, or `limit` passes. Says in the
/// journal and in `systemctl status` (STATUS=) which service it waits for.
async fn wait_bound(server: &Server, want: &[(String, usize)], limit: Option<Duration>) {
    let start = tokio::time::Instant::now();
    let mut told = None;
    loop {
        let short: Vec<String> = want
            .iter()
            .filter(|(name, n)| server.local_addrs(name).len() < *n)
            .map(|(name, n)| format!("{name} ({}/{n})", server.local_addrs(name).len()))
            .collect();
        if short.is_empty() {
            // STATUS= stays until replaced: do not leave "binding ..." on a healthy service.
            if told.is_some() {
                notify("STATUS", shared::notify::notify("STATUS=every listener bound"));
            }
            return;
        }
        if limit.is_some_and(|l| start.elapsed() >= l) {
            tracing::warn!(waiting = %short.join(", "), "not every listener is bound yet; going on, binding continues");
            let status = format!("STATUS=after the last reload, still binding listeners of {}", short.join(", "));
            notify("STATUS", shared::notify::notify(&status));
            return;
        }
        // Tell once the first bind attempt had its chance, and again when the list changes.
        if start.elapsed() >= Duration::from_millis(200) && told.as_ref() != Some(&short) {
            let status = format!("STATUS=binding listeners of {}", short.join(", "));
            notify("STATUS", shared::notify::notify(&status));
            told = Some(short);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Why the last reload was refused, while the one after it has not been applied.
static LAST_REFUSAL: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// Keeps `systemctl status` showing a one-line summary (STATUS=): per pool its tier and the
/// paths up, the open connections, and a refused reload; sent when it changes, checked every
/// 2 s.
async fn status_line(state: std::sync::Arc<ingress::server::Shared>) {
    let mut last = String::new();
    loop {
        let rt = state.runtime();
        let pools: Vec<String> = rt
            .pools
            .values()
            .map(|p| {
                let wans = &p.paths[..p.wan_count];
                let up: Vec<&str> = wans.iter().filter(|x| x.is_up()).map(|x| &*x.name).collect();
                let tier = match p.tier() {
                    "mesh" => ", ON MESH",
                    "none" => ", NO PATH HOME",
                    _ => "",
                };
                format!("{}: {}/{} WAN up ({}){tier}", p.name, up.len(), wans.len(), up.join(" "))
            })
            .collect();
        drop(rt);
        let mut line = format!("{}; {} open connections", pools.join("; "), state.open_connections());
        if let Some(why) = &*LAST_REFUSAL.lock().unwrap_or_else(|p| p.into_inner()) {
            line.push_str("; last reload refused: ");
            // One line: STATUS= ends at a newline.
            line.extend(why.lines().flat_map(|l| [l, " "]));
        }
        if line != last {
            notify("STATUS", shared::notify::notify(&format!("STATUS={line}")));
            last = line;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Tells systemd (`Type=notify`); a failure is logged, never fatal: the service works without.
fn notify(what: &str, result: std::io::Result<bool>) {
    if let Err(e) = result {
        tracing::warn!("sd_notify {what}: {e}");
    }
}

/// Waits until every pool has judged its paths once (so the first connections after READY=1
/// avoid a path that is down), or `FIRST_ROUND_WAIT` passes.
async fn wait_first_round(server: &Server) {
    let probed = || server.shared().runtime().pools.values().all(|p| p.probed());
    shared::notify::wait_first_round(probed, shared::notify::FIRST_ROUND_WAIT).await;
}

async fn run(path: PathBuf, config: Config, workers: shared::workers::Workers) -> anyhow::Result<()> {
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    // systemd's watchdog over every event loop, and the tests' hook (TEST_WEDGE_RUNTIME_ON_SIGUSR2).
    shared::watchdog::start(&workers)?;
    let want = expected_listeners(&config);
    let server = Server::start_on(config, workers).await;
    tracing::info!(config = %path.display(), "ingress running");
    // Listeners bind in the background (a taken port is retried): READY=1 waits for all of
    // them, so `systemctl start` returns with every port open, or times out naming the wait,
    // and for the first probe round (bounded). A stop meanwhile (systemd's start timeout,
    // Ctrl-C) goes straight to the drain.
    let stopped = tokio::select! {
        _ = async { wait_bound(&server, &want, None).await; wait_first_round(&server).await } => false,
        _ = term.recv() => true,
        _ = int.recv() => true,
    };
    if !stopped {
        notify("READY", shared::notify::ready());
        if std::env::var_os(shared::notify::NOTIFY_SOCKET).is_some() {
            tokio::spawn(status_line(server.shared().clone()));
        }
        serve(&server, &path, &mut hup, &mut term, &mut int).await;
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
