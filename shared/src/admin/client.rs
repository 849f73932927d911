//! The `ctl` subcommands' side of the admin API: one HTTP/1.1 request over hyper's
//! client connection, bounded in time, answered as status and body text.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

use super::token::Token;

/// Longest a `ctl` call waits for the whole exchange.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Why a `ctl` call got no answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("cannot connect to the admin listener {addr}: {source}")]
    Connect { addr: SocketAddr, source: std::io::Error },
    #[error("admin listener {addr}: {source}")]
    Http { addr: SocketAddr, source: hyper::Error },
    #[error("admin listener {addr}: bad request: {source}")]
    Request { addr: SocketAddr, source: http::Error },
    #[error("admin listener {addr}: no answer within {TIMEOUT:?}")]
    Timeout { addr: SocketAddr },
}

/// Sends `method path_and_query` (with the bearer `token`, if any, and `user` as the
/// `X-Admin-User` the server logs) and returns the status and body.
pub async fn request(
    addr: SocketAddr,
    method: Method,
    path_and_query: &str,
    token: Option<&Token>,
    user: &str,
) -> Result<(StatusCode, String), CallError> {
    tokio::time::timeout(TIMEOUT, exchange(addr, method, path_and_query, token, user))
        .await
        .unwrap_or(Err(CallError::Timeout { addr }))
}

async fn exchange(
    addr: SocketAddr,
    method: Method,
    path_and_query: &str,
    token: Option<&Token>,
    user: &str,
) -> Result<(StatusCode, String), CallError> {
    let stream = tokio::net::TcpStream::connect(addr).await.map_err(|source| CallError::Connect { addr, source })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
        .await
        .map_err(|source| CallError::Http { addr, source })?;
    let driver = tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path_and_query)
        .header(http::header::HOST, addr.to_string())
        .header(USER_HEADER, user);
    if let Some(t) = token {
        req = req.header(http::header::AUTHORIZATION, format!("Bearer {}", t.expose()));
    }
    let req = req.body(Empty::new()).map_err(|source| CallError::Request { addr, source })?;
    let resp = sender.send_request(req).await.map_err(|source| CallError::Http { addr, source })?;
    let status = resp.status();
    let body = resp.into_body().collect().await.map_err(|source| CallError::Http { addr, source })?.to_bytes();
    driver.abort();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// The header a `ctl` client names its operator in (the server logs it with each change).
pub const USER_HEADER: &str = "x-admin-user";

/// Where a `ctl` call connects for an admin listener bound to `listen`: a wildcard address
/// (`0.0.0.0`, `[::]`) is reached over loopback of the same family.
pub fn reach(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        std::net::IpAddr::V4(v4) if v4.is_unspecified() => std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        std::net::IpAddr::V6(v6) if v6.is_unspecified() => std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

/// Who runs a `ctl` command, for the server's log: the user behind sudo, else the user.
pub fn operator() -> String {
    ["SUDO_USER", "USER", "LOGNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|u| !u.is_empty()))
        .unwrap_or_else(|| "unknown".into())
}

/// `<binary> ctl [--admin ADDR] <what>`, the same in both binaries; `W` is the binary's own
/// list of subcommands (what a drain or a weight names differs).
#[derive(Debug, clap::Args)]
pub struct CtlCommand<W: clap::Subcommand> {
    /// Admin listener to call instead of the config's `admin.listen`.
    #[arg(long)]
    pub admin: Option<SocketAddr>,
    #[command(subcommand)]
    pub what: W,
}

/// `ctl status`'s option, in both binaries.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Print the raw `/status` JSON instead of the summary.
    #[arg(long)]
    pub json: bool,
}

/// One `ctl` subcommand's request: what to send, and how a successful answer is printed.
pub struct Call {
    pub method: Method,
    pub path_and_query: String,
    /// Turns the body into the human summary; `None` prints the body as it came (`--json`,
    /// and the control actions' one-line answers).
    pub summary: Option<fn(&str) -> String>,
}

impl Call {
    /// `ctl status`: `GET /status`, printed through `summary`, or as it came with `--json`.
    pub fn status(args: &StatusArgs, summary: fn(&str) -> String) -> Self {
        Self { method: Method::GET, path_and_query: "/status".to_owned(), summary: (!args.json).then_some(summary) }
    }

    /// A runtime-control action: `POST /api/<action>?<query>`, the values percent-encoded.
    pub fn control(action: &str, query: &[(&str, &str)]) -> Self {
        let query: Vec<String> = query.iter().map(|(k, v)| format!("{k}={}", super::encode(v))).collect();
        Self { method: Method::POST, path_and_query: format!("/api/{action}?{}", query.join("&")), summary: None }
    }
}

/// What `ctl` reads of a config file: `[admin] listen` and `token_file`, with the same
/// environment overrides as the server (`<env_prefix>ADMIN__LISTEN`, ...), and nothing else.
/// An operator must be able to look and drain while another part of the file is being
/// edited, or with a CA file gone; and `ctl status` needs no token, so no right to read it.
/// A file that is not TOML as a whole (an edit half done) is read for its `[admin]` table
/// alone ([`admin_table`]), with a warning.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CtlSettings {
    pub listen: Option<SocketAddr>,
    pub token_file: Option<PathBuf>,
}

impl CtlSettings {
    pub fn load(path: &Path, env_prefix: &str) -> Result<Self, String> {
        Self::load_with(path, env_prefix, |w| eprintln!("warning: {w}"))
    }

    /// [`CtlSettings::load`], its warning given to `warn`.
    fn load_with(path: &Path, env_prefix: &str, warn: impl FnOnce(String)) -> Result<Self, String> {
        use figment::providers::{Format, Toml};
        let file = match Self::extract(Toml::file_exact(path), env_prefix) {
            Ok(file) => file,
            Err(whole) => {
                let alone = std::fs::read_to_string(path).ok().as_deref().and_then(admin_table);
                match alone.map(|t| Self::extract(Toml::string(&t), env_prefix)) {
                    Some(Ok(file)) => {
                        warn(format!("{}: {whole}; reading its [admin] table alone", path.display()));
                        file
                    }
                    _ => return Err(format!("{}: {whole}", path.display())),
                }
            }
        };
        let listen = match file.admin.listen {
            Some(s) => Some(s.parse().map_err(|_| format!("{}: admin.listen: `{s}` is not IP:PORT", path.display()))?),
            None => None,
        };
        Ok(Self { listen, token_file: file.admin.token_file })
    }

    fn extract(toml: impl figment::Provider, env_prefix: &str) -> Result<File, String> {
        let env = figment::providers::Env::prefixed(env_prefix).ignore(&["LOG"]).split("__");
        figment::Figment::new().merge(toml).merge(env).extract().map_err(|e| e.to_string())
    }
}

/// The part of a config file `ctl` reads.
#[derive(serde::Deserialize)]
struct File {
    #[serde(default)]
    admin: Admin,
}

#[derive(Default, serde::Deserialize)]
struct Admin {
    listen: Option<String>,
    token_file: Option<PathBuf>,
}

/// The `[admin]` table of a config file's text, from its header to the next table's (none
/// if it has none): what `ctl` reads when the file as a whole does not parse. `[admin]`
/// holds only strings and a list of them (`allowed_hosts`, whose lines, even spread over
/// several, start with a key, a string or `]`), so a line that starts with `[` is a header.
fn admin_table(text: &str) -> Option<String> {
    let mut table: Option<String> = None;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with('[') {
            let header = trimmed.split('#').next().unwrap_or_default().trim_end();
            match (header == "[admin]", table.is_some()) {
                (true, false) => table = Some(String::new()),
                (_, true) => break,
                (false, false) => {}
            }
        }
        if let Some(table) = table.as_mut() {
            table.push_str(line);
            table.push('\n');
        }
    }
    table
}

/// [`run`] with the listener (unless `admin` names another) and the token file from the
/// config at `path` ([`CtlSettings`]). With `admin` given, a config that cannot be read at
/// all still lets `ctl status` run (control then has no token).
pub fn run_with_config(path: &Path, env_prefix: &str, admin: Option<SocketAddr>, call: Call) -> ExitCode {
    match (CtlSettings::load(path, env_prefix), admin) {
        (Ok(s), _) => run(admin.or(s.listen), s.token_file.as_deref(), call),
        (Err(e), Some(admin)) => {
            eprintln!("warning: {e}; no token file");
            run(Some(admin), None, call)
        }
        (Err(e), None) => {
            eprintln!("{e}\n(`--admin IP:PORT` reaches the admin listener without the config)");
            ExitCode::FAILURE
        }
    }
}

/// Runs a `ctl` call against the admin listener bound at `listen` (from `--admin` or the
/// config) and prints the answer; exit status 0 on a 2xx, 1 otherwise with the server's
/// reason on stderr. Only runtime control (a POST) reads the token file; without one it is
/// refused here, before the server would answer 403.
pub fn run(listen: Option<SocketAddr>, token_file: Option<&Path>, call: Call) -> ExitCode {
    let Some(addr) = listen.map(reach) else {
        eprintln!("no admin listener: set admin.listen in the config (or pass --admin)");
        return ExitCode::FAILURE;
    };
    let token = match (call.method == Method::POST, token_file) {
        (false, _) => None,
        (true, None) => {
            eprintln!("runtime control needs admin.token_file in the config");
            return ExitCode::FAILURE;
        }
        (true, Some(f)) => match Token::from_file(f) {
            Ok(t) => Some(t),
            Err(e) => {
                eprintln!("admin.token_file: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    let token = token.as_ref();
    if let Some(w) = clear_text_warning(addr, token.is_some(), crate::own_addrs::is_own) {
        eprintln!("warning: {w}");
    }
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(request(addr, call.method, &call.path_and_query, token, &operator())) {
        Ok((status, body)) if status.is_success() => {
            let text = match call.summary {
                Some(summary) => summary(&body),
                None => body,
            };
            // `print!` panics on a closed pipe; a reader that stopped early (`ctl status | head`)
            // is not a failure.
            let mut out = std::io::stdout().lock();
            match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                    eprintln!("cannot write the answer: {e}");
                    ExitCode::FAILURE
                }
                _ => ExitCode::SUCCESS,
            }
        }
        Ok((status, body)) => {
            eprint!("{status}: {body}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// What `ctl` says before sending the token to `addr`: the admin listener speaks plain HTTP,
/// so to another host anyone on the way reads it (and may then drain paths). To one of this
/// host's own addresses (`own`), as to loopback, it never leaves the machine.
fn clear_text_warning(addr: SocketAddr, sends_token: bool, own: impl Fn(std::net::IpAddr) -> bool) -> Option<String> {
    (sends_token && !own(addr.ip().to_canonical())).then(|| {
        format!(
            "the admin token goes to {addr} in clear text (the admin listener speaks plain HTTP); \
             keep the listener on loopback and reach it with `ssh -L {port}:127.0.0.1:{port}`",
            port = addr.port()
        )
    })
}

/// A path's or upstream's weight as `ctl status` prints it, from its `/status` object: the
/// runtime override with the configured weight beside it, or the weight in force.
pub fn weight_text(entry: &serde_json::Value) -> String {
    match entry["weight_override"].as_u64() {
        Some(w) => format!("{w} (override; config {})", entry["configured_weight"]),
        None => entry["weight"].to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_built_as_both_binaries_send_them() {
        let c = Call::control(
            "weight",
            &[("name", "cloud.example.org"), ("upstream", "http://10.0.0.5:80"), ("weight", "5")],
        );
        assert_eq!(c.method, Method::POST);
        assert_eq!(c.path_and_query, "/api/weight?name=cloud.example.org&upstream=http%3A%2F%2F10.0.0.5%3A80&weight=5");
        assert!(c.summary.is_none());
        let c = Call::control("drain", &[("path", "home/wan 1")]);
        assert_eq!(c.path_and_query, "/api/drain?path=home%2Fwan%201");
        fn upper(s: &str) -> String {
            s.to_uppercase()
        }
        let c = Call::status(&StatusArgs { json: false }, upper);
        assert_eq!((c.method, c.path_and_query.as_str()), (Method::GET, "/status"));
        assert_eq!(c.summary.map(|f| f("ok")), Some("OK".to_owned()));
        assert!(Call::status(&StatusArgs { json: true }, upper).summary.is_none(), "--json prints the body as it came");
    }

    fn load(text: &str) -> (Result<CtlSettings, String>, Option<String>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).unwrap();
        let mut warned = None;
        let got = CtlSettings::load_with(&path, "CTL_TEST_UNSET_", |w| warned = Some(w));
        (got, warned)
    }

    /// The token is sent in clear text without a warning only where it stays on this host.
    #[test]
    fn sending_the_token_off_this_host_is_warned_about() {
        let at = |a: &str| a.parse::<SocketAddr>().unwrap();
        let own = crate::own_addrs::is_own;
        assert!(clear_text_warning(at("127.0.0.1:9180"), true, own).is_none());
        assert!(clear_text_warning(at("[::1]:9180"), true, own).is_none());
        assert!(clear_text_warning(at("[::ffff:127.0.0.1]:9180"), true, own).is_none());
        // 192.0.2.0/24 (TEST-NET-1) as another host's address, whatever this one has.
        let other = |ip: std::net::IpAddr| ip.is_loopback();
        assert!(clear_text_warning(at("192.0.2.7:9181"), false, other).is_none(), "no token, nothing to warn about");
        let lan_here = |ip: std::net::IpAddr| ip.is_loopback() || ip == at("192.0.2.7:1").ip();
        assert!(clear_text_warning(at("192.0.2.7:9181"), true, lan_here).is_none(), "this host's own LAN address");
        let w = clear_text_warning(at("192.0.2.7:9181"), true, other).expect("a warning");
        assert!(w.contains("192.0.2.7:9181") && w.contains("ssh -L 9181:127.0.0.1:9181"), "{w}");
    }

    /// A file that does not parse as a whole (an edit half done elsewhere) is read for its
    /// `[admin]` table alone, with a warning naming the error; one whose `[admin]` itself does
    /// not parse, or that has none, is an error naming the file.
    #[test]
    fn a_file_broken_elsewhere_is_read_for_its_admin_table() {
        let admin = "[admin] # where ctl calls\nlisten = \"127.0.0.1:9000\"\nallowed_hosts = [\n  \"a.lan\",\n]\n\
                     token_file = \"/etc/t\"\n";
        let want =
            || CtlSettings { listen: Some("127.0.0.1:9000".parse().unwrap()), token_file: Some("/etc/t".into()) };
        assert_eq!(load(&format!("[wan]\naddresses = [\"1.2.3.4\"]\n{admin}[http]\n")), (Ok(want()), None));

        let broken = format!("[wan]\naddresses = [\"1.2.3.4\"\n{admin}  [[stream]]\nname = \"half\nlisten = 5\n");
        let (got, warned) = load(&broken);
        assert_eq!(got, Ok(want()));
        let warned = warned.unwrap();
        assert!(warned.contains("c.toml") && warned.contains("[admin] table alone"), "{warned}");

        for bad in ["[admin]\nlisten = \"127.0.0.1:9000\n[http]\n", "[wan\nx = 1\n", "[admin]\nlisten = 5\n[x\n"] {
            let (got, warned) = load(bad);
            let err = got.unwrap_err();
            assert!(err.contains("c.toml"), "{err}");
            assert_eq!(warned, None);
        }
    }
}
