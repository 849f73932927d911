//! TLS backends for the routing tests: self-signed certificates made with `openssl req -x509`
//! (P-256, valid two days, the names as subjectAltName) and `openssl s_server -WWW` serving a
//! directory, so `GET /id.txt` names the backend that answered. `s_server` serves one connection
//! at a time, which is enough for a handful of `curl` requests and health probes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::cmd;
use crate::services::{missing_listeners, Listen};
use crate::topology::{Role, Topology};
use crate::wait::{check, wait_until};

/// Errors naming a missing `openssl` or `curl`.
pub fn require() -> Result<()> {
    let on_path =
        |t: &str| std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(t).is_file()));
    let missing: Vec<&str> = ["openssl", "curl"].into_iter().filter(|t| !on_path(t)).collect();
    if !missing.is_empty() {
        bail!("missing {missing:?} (Debian packages openssl, curl): run tests/netns/deps.sh");
    }
    Ok(())
}

/// A certificate and its key.
#[derive(Debug, Clone)]
pub struct Cert {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Makes a self-signed certificate for `names` (the first is the subject's CN) in `dir`.
pub fn self_signed(dir: &Path, stem: &str, names: &[&str]) -> Result<Cert> {
    require()?;
    let first = names.first().context("a certificate needs a name")?;
    let cert = dir.join(format!("{stem}.pem"));
    let key = dir.join(format!("{stem}.key"));
    let san: Vec<String> = names.iter().map(|n| format!("DNS:{n}")).collect();
    let (c, k) = (cert.display().to_string(), key.display().to_string());
    let subj = format!("/CN={first}");
    let ext = format!("subjectAltName={}", san.join(","));
    cmd::run(&[
        "openssl",
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "2",
        "-subj",
        &subj,
        "-addext",
        &ext,
        "-keyout",
        &k,
        "-out",
        &c,
    ])
    .with_context(|| format!("making a certificate for {names:?}"))?;
    Ok(Cert { cert, key })
}

/// A certificate signed by a test CA made for it (both P-256, two days, with openssl).
#[derive(Debug, Clone)]
pub struct CaSigned {
    /// The CA's certificate (what a client trusts).
    pub ca: PathBuf,
    /// The leaf alone (`{stem}.pem`) and its key.
    pub leaf: Cert,
}

/// Makes a CA (`{stem}-ca.pem`, subject `ca_cn`) and a leaf (`{stem}.pem`/`.key`, subject
/// `leaf_cn`) for serverAuth with `san` as its subjectAltName (`DNS:a.test`, `IP:10.0.0.1`).
pub fn ca_signed(dir: &Path, stem: &str, ca_cn: &str, leaf_cn: &str, san: &str) -> Result<CaSigned> {
    require()?;
    let p = |f: String| dir.join(f).display().to_string();
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let (ca_key, ca_pem) = (p(format!("{stem}-ca.key")), p(format!("{stem}-ca.pem")));
    let ca_subj = format!("/CN={ca_cn}");
    let mut ca = vec!["openssl", "req", "-x509"];
    ca.extend(ec);
    ca.extend(["-keyout", &ca_key, "-out", &ca_pem, "-days", "2", "-subj", &ca_subj]);
    cmd::run(&ca).with_context(|| format!("making the test CA {ca_cn}"))?;
    let (key, csr, leaf) = (p(format!("{stem}.key")), p(format!("{stem}.csr")), p(format!("{stem}.pem")));
    let leaf_subj = format!("/CN={leaf_cn}");
    let mut req = vec!["openssl", "req"];
    req.extend(ec);
    req.extend(["-keyout", &key, "-out", &csr, "-subj", &leaf_subj]);
    cmd::run(&req).with_context(|| format!("making the key and request for {leaf_cn}"))?;
    let ext = dir.join(format!("{stem}.ext"));
    std::fs::write(
        &ext,
        format!(
            "subjectAltName={san}\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n"
        ),
    )?;
    let ext = ext.display().to_string();
    cmd::run(&[
        "openssl",
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        &ca_pem,
        "-CAkey",
        &ca_key,
        "-CAcreateserial",
        "-out",
        &leaf,
        "-days",
        "2",
        "-extfile",
        &ext,
    ])
    .with_context(|| format!("signing the certificate for {leaf_cn}"))?;
    Ok(CaSigned { ca: ca_pem.into(), leaf: Cert { cert: leaf.into(), key: key.into() } })
}

/// Starts `openssl s_server -WWW` in `role` on `0.0.0.0:port` (process `name`), serving a
/// fresh directory whose `id.txt` holds `id`, and waits until it listens.
pub fn start_s_server(t: &mut Topology, role: Role, name: &str, port: u16, cert: &Cert, id: &str) -> Result<()> {
    let www = t.dir().join(format!("{name}-www"));
    std::fs::create_dir_all(&www).with_context(|| format!("creating {}", www.display()))?;
    std::fs::write(www.join("id.txt"), format!("{id}\n"))?;
    // -WWW serves paths relative to the working directory.
    let script = format!(
        "cd '{}' && exec openssl s_server -accept 0.0.0.0:{port} -cert '{}' -key '{}' -WWW -quiet",
        www.display(),
        cert.cert.display(),
        cert.key.display()
    );
    t.spawn(role, name, &["sh".into(), "-c".into(), script])?;
    let ns = t.ns(role).to_string();
    wait_until(&format!("{name} listening"), Duration::from_secs(10), Duration::from_millis(20), || {
        t.proc_mut(name)?.ensure_running()?;
        let missing = missing_listeners(&ns, &[Listen::Tcp(port)])?;
        check(missing.is_empty(), || "not listening yet".into())
    })
}
