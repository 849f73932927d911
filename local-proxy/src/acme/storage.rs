//! Files ACME keeps, in certbot's layout so that the TLS store's certbot loader serves them and a
//! certbot directory is picked up as it is: `live/<name>/{fullchain,privkey,cert,chain}.pem`
//! (symlinks into `archive/<name>/` when certbot made them: a renewal adds the next numbered
//! archive files and swaps the links), and the account credentials under `accounts/`. Every file
//! is written to a temporary name, synced and renamed into place; keys are created 0600.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use x509_parser::extensions::{GeneralName, ParsedExtension};

/// Why a file could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct StorageError {
    pub path: String,
    pub reason: String,
}

fn fail(path: &Path, reason: impl ToString) -> StorageError {
    StorageError { path: path.display().to_string(), reason: reason.to_string() }
}

/// Write `bytes` to `path` atomically: a temporary file beside it with `mode`, synced, renamed.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), StorageError> {
    put_in_place(vec![stage(path, bytes, mode)?])
}

/// A file written and synced beside its final name, not yet in place; removed if dropped so.
struct Staged {
    tmp: PathBuf,
    path: PathBuf,
    placed: bool,
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.placed {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

fn stage(path: &Path, bytes: &[u8], mode: u32) -> Result<Staged, StorageError> {
    let dir = path.parent().ok_or_else(|| fail(path, "has no parent directory"))?;
    let name = path.file_name().ok_or_else(|| fail(path, "has no file name"))?.to_string_lossy();
    let staged =
        Staged { tmp: dir.join(format!(".{name}.tmp.{}", std::process::id())), path: path.into(), placed: false };
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&staged.tmp)
        .map_err(|e| fail(&staged.tmp, e))?;
    // The mode above is filtered by the umask; keys must end up exactly 0600.
    f.set_permissions(fs::Permissions::from_mode(mode)).map_err(|e| fail(&staged.tmp, e))?;
    f.write_all(bytes).map_err(|e| fail(&staged.tmp, e))?;
    f.sync_all().map_err(|e| fail(&staged.tmp, e))?;
    Ok(staged)
}

/// Rename staged files into place, in order. Everything that can run out of space or quota is
/// done by then, so a full disk cannot leave a new key beside an old certificate: after a
/// restart there would be no earlier pair in memory to serve instead.
fn put_in_place(files: Vec<Staged>) -> Result<(), StorageError> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    for mut f in files {
        fs::rename(&f.tmp, &f.path).map_err(|e| fail(&f.path, e))?;
        f.placed = true;
        if let Some(dir) = f.path.parent().filter(|d| !dirs.iter().any(|x| x == d)) {
            dirs.push(dir.to_path_buf());
        }
    }
    dirs.iter().try_for_each(|d| sync_dir(d))
}

fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| fail(dir, e))
}

fn create_dir(dir: &Path, mode: u32) -> Result<(), StorageError> {
    fs::create_dir_all(dir).map_err(|e| fail(dir, e))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(mode)).map_err(|e| fail(dir, e))
}

/// A certificate as it is on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnDisk {
    /// Lower-case DNS names of the leaf (SAN dNSNames).
    pub names: Vec<String>,
    /// Validity, Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    /// ARI's certificate identifier: base64url(AKI keyIdentifier) "." base64url(serial), when
    /// the leaf has an AKI (every CA certificate does).
    pub ari_id: Option<(Vec<u8>, Vec<u8>)>,
}

/// Read the leaf of `live/<name>/fullchain.pem`, if there is a usable one.
pub fn read_cert(fullchain: &Path) -> Result<Option<OnDisk>, StorageError> {
    if !fullchain.exists() {
        return Ok(None);
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(fullchain)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| fail(fullchain, e))?;
    let leaf = chain.first().ok_or_else(|| fail(fullchain, "no certificate in the file"))?;
    parse_leaf(leaf.as_ref()).map(Some).map_err(|e| fail(fullchain, e))
}

/// Names, validity and ARI identifier of a DER certificate.
pub fn parse_leaf(der: &[u8]) -> Result<OnDisk, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    let mut names = Vec::new();
    let mut aki = None;
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) => {
                for n in &san.general_names {
                    if let GeneralName::DNSName(d) = n {
                        names.push(d.to_ascii_lowercase());
                    }
                }
            }
            ParsedExtension::AuthorityKeyIdentifier(a) => aki = a.key_identifier.as_ref().map(|k| k.0.to_vec()),
            _ => {}
        }
    }
    names.sort();
    names.dedup();
    Ok(OnDisk {
        names,
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        ari_id: aki.map(|k| (k, cert.tbs_certificate.raw_serial().to_vec())),
    })
}

/// Install a new certificate for lineage `name` under `live`. `fullchain` is the PEM chain,
/// leaf first, as the CA sent it; `key` the PEM private key.
pub fn install(live: &Path, name: &str, fullchain: &str, key: &str) -> Result<(), StorageError> {
    let dir = live.join(name);
    let (cert, chain) = split_chain(fullchain);
    let link = dir.join("fullchain.pem");
    if fs::symlink_metadata(&link).is_ok_and(|m| m.file_type().is_symlink()) {
        return install_certbot_archive(
            &dir,
            &link,
            [("privkey", key), ("cert", &cert), ("chain", &chain), ("fullchain", fullchain)],
        );
    }
    // certbot makes live/ and archive/ 0700; the folder of one name stays readable like certbot's.
    if !live.exists() {
        create_dir(live, 0o700)?;
    }
    if !dir.exists() {
        create_dir(&dir, 0o755)?;
    }
    // All four are written before any goes in place. The key goes first: a poll between the
    // renames sees the old chain with a new key, refuses the mismatched pair and keeps serving
    // the old certificate (tls::load).
    put_in_place(vec![
        stage(&dir.join("privkey.pem"), key.as_bytes(), 0o600)?,
        stage(&dir.join("cert.pem"), cert.as_bytes(), 0o644)?,
        stage(&dir.join("chain.pem"), chain.as_bytes(), 0o644)?,
        stage(&link, fullchain.as_bytes(), 0o644)?,
    ])
}

/// certbot's layout: `live/<name>/X.pem` → `../../archive/<name>/XN.pem`. Write version N+1 of
/// every file into the archive, then swap each link atomically (a new link renamed over it).
fn install_certbot_archive(dir: &Path, link: &Path, files: [(&str, &str); 4]) -> Result<(), StorageError> {
    let target = fs::read_link(link).map_err(|e| fail(link, e))?;
    let resolved = if target.is_absolute() { target.clone() } else { dir.join(&target) };
    let archive = resolved.parent().ok_or_else(|| fail(link, "symlink target has no directory"))?.to_path_buf();
    let current = target
        .file_name()
        .and_then(|f| f.to_str())
        .and_then(|f| f.strip_prefix("fullchain"))
        .and_then(|f| f.strip_suffix(".pem"))
        .and_then(|n| n.parse::<u32>().ok())
        .ok_or_else(|| fail(link, format!("`{}` is not certbot's fullchainN.pem", target.display())))?;
    // Skip numbers already taken (a crash after writing, before swapping).
    let taken =
        |n: u32| archive.join(format!("fullchain{n}.pem")).exists() || archive.join(format!("privkey{n}.pem")).exists();
    let next = (current..=u32::MAX)
        .skip(1)
        .find(|&n| !taken(n))
        .ok_or_else(|| fail(link, format!("no certbot archive number left after `{}`", target.display())))?;
    let link_dir = target.parent().map(Path::to_path_buf).unwrap_or_default();
    for (stem, text) in files {
        let mode = if stem == "privkey" { 0o600 } else { 0o644 };
        write_atomic(&archive.join(format!("{stem}{next}.pem")), text.as_bytes(), mode)?;
    }
    // Every new link is made before one is swapped, as in `install`.
    let mut links = Vec::with_capacity(files.len());
    for (stem, _) in files {
        let link = Staged {
            tmp: dir.join(format!(".{stem}.pem.link.{}", std::process::id())),
            path: dir.join(format!("{stem}.pem")),
            placed: false,
        };
        let _ = fs::remove_file(&link.tmp);
        let new_target: PathBuf = link_dir.join(format!("{stem}{next}.pem"));
        std::os::unix::fs::symlink(&new_target, &link.tmp).map_err(|e| fail(&link.tmp, e))?;
        links.push(link);
    }
    put_in_place(links)
}

/// The leaf alone and the rest of the chain, both PEM.
fn split_chain(fullchain: &str) -> (String, String) {
    const END: &str = "-----END CERTIFICATE-----";
    match fullchain.find(END) {
        Some(i) => {
            let (leaf, rest) = fullchain.split_at(i + END.len());
            (format!("{leaf}\n"), rest.trim_start().to_string())
        }
        None => (fullchain.to_string(), String::new()),
    }
}

/// Where the account credentials for `directory` live: `accounts/<host_port_path>/account.json`.
pub fn account_path(storage: &Path, directory: &str) -> PathBuf {
    let bare = directory.strip_prefix("https://").unwrap_or(directory);
    let safe: String =
        bare.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '_' }).collect();
    storage.join("accounts").join(safe).join("account.json")
}

/// Read the stored account credentials (JSON), if any.
pub fn read_account(path: &Path) -> Result<Option<String>, StorageError> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(fail(path, e)),
    }
}

/// Store the account credentials (they hold the account key: 0600, folders 0700).
pub fn write_account(path: &Path, json: &str) -> Result<(), StorageError> {
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            create_dir(dir, 0o700)?;
        }
    }
    write_atomic(path, json.as_bytes(), 0o600)
}

/// Where a certificate's failed attempts are kept between runs:
/// `local-proxy-retry/<folder>` beside `live/` (a name certbot's own tree does not use).
/// `None` for a folder name that is not one plain file name.
pub fn retry_path(storage: &Path, dir: &str) -> Option<PathBuf> {
    let plain = !dir.is_empty() && dir != "." && dir != ".." && !dir.contains('/') && !dir.contains('\0');
    plain.then(|| storage.join("local-proxy-retry").join(dir))
}

/// The failed attempts in a row and when the next may be made (Unix seconds), as the last run
/// left them; `None` when there were none, or the file cannot be read as such (then the
/// certificate is ordered as if nothing had failed, as before the file existed).
pub fn read_retry(path: &Path) -> Option<(u32, i64)> {
    let text = fs::read_to_string(path).ok()?;
    let mut fields = text.split_whitespace();
    let failures = fields.next()?.parse().ok()?;
    let not_before = fields.next()?.parse().ok()?;
    Some((failures, not_before))
}

/// Keep `failures` and `not_before` for the next run; zero failures removes the file.
pub fn write_retry(path: &Path, failures: u32, not_before: i64) -> Result<(), StorageError> {
    if failures == 0 {
        return match fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(fail(path, e)),
            _ => Ok(()),
        };
    }
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            create_dir(dir, 0o700)?;
        }
    }
    write_atomic(path, format!("{failures} {not_before}\n").as_bytes(), 0o600)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A certificate's failed attempts survive a restart; a success removes them; what the
    /// file holds is read as nothing when it is not two numbers; a folder name that is not
    /// one plain file name gets no file.
    #[test]
    fn failed_attempts_are_kept_until_a_success() {
        let storage = tempfile::tempdir().unwrap();
        let path = retry_path(storage.path(), "a.test").unwrap();
        assert_eq!(read_retry(&path), None);
        write_retry(&path, 3, 1_800_000_000).unwrap();
        assert_eq!(read_retry(&path), Some((3, 1_800_000_000)));
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        write_retry(&path, 0, 0).unwrap();
        assert!(!path.exists());
        write_retry(&path, 0, 0).unwrap();
        for bad in ["", "3", "x 5", "3 y"] {
            fs::write(&path, bad).unwrap();
            assert_eq!(read_retry(&path), None, "{bad:?}");
        }
        for bad in ["", ".", "..", "a/b"] {
            assert_eq!(retry_path(storage.path(), bad), None, "{bad:?}");
        }
    }

    fn leaf_pem(names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (format!("{}{}", cert.pem(), cert.pem()), key.serialize_pem())
    }

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_new_lineage_is_written_in_certbot_layout_with_a_private_key() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("live");
        let (chain, key) = leaf_pem(&["a.test"]);
        install(&live, "a.test", &chain, &key).unwrap();
        let d = live.join("a.test");
        assert_eq!(fs::read_to_string(d.join("fullchain.pem")).unwrap(), chain);
        assert_eq!(fs::read_to_string(d.join("privkey.pem")).unwrap(), key);
        assert_eq!(mode(&d.join("privkey.pem")), 0o600);
        assert_eq!(mode(&live), 0o700);
        assert_eq!(fs::read_to_string(d.join("cert.pem")).unwrap().matches("BEGIN CERTIFICATE").count(), 1);
        assert_eq!(fs::read_to_string(d.join("chain.pem")).unwrap().matches("BEGIN CERTIFICATE").count(), 1);
        let loaded = crate::tls::load_pair(&d.join("fullchain.pem"), &d.join("privkey.pem")).unwrap();
        assert_eq!(loaded.names, ["a.test"]);
        let on_disk = read_cert(&d.join("fullchain.pem")).unwrap().unwrap();
        assert_eq!(on_disk.names, ["a.test"]);
        assert!(on_disk.not_after > on_disk.not_before);
        // No temporary files left behind.
        assert_eq!(fs::read_dir(&d).unwrap().count(), 4);
    }

    #[test]
    fn a_failed_write_leaves_the_installed_pair_whole() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("live");
        let (chain1, key1) = leaf_pem(&["d.test"]);
        install(&live, "d.test", &chain1, &key1).unwrap();
        let d = live.join("d.test");
        // The last file cannot be written (its temporary name is taken by a directory), as on
        // a full disk: the key written before it must not be put in place either.
        let blocker = d.join(format!(".fullchain.pem.tmp.{}", std::process::id()));
        fs::create_dir(&blocker).unwrap();
        let (chain2, key2) = leaf_pem(&["d.test"]);
        install(&live, "d.test", &chain2, &key2).unwrap_err();
        fs::remove_dir(&blocker).unwrap();
        assert_eq!(fs::read_to_string(d.join("privkey.pem")).unwrap(), key1);
        crate::tls::load_pair(&d.join("fullchain.pem"), &d.join("privkey.pem")).expect("the old pair, whole");
        assert_eq!(fs::read_dir(&d).unwrap().count(), 4, "no temporary files left behind");
    }

    /// A lineage as certbot leaves it under `dir`: `live/<name>/*.pem` links to version `n` of
    /// each file in `archive/<name>/`; returns both directories.
    fn certbot_lineage(dir: &Path, name: &str, n: u32, chain: &str, key: &str) -> (PathBuf, PathBuf) {
        let (live, archive) = (dir.join("live").join(name), dir.join("archive").join(name));
        fs::create_dir_all(&live).unwrap();
        fs::create_dir_all(&archive).unwrap();
        for (stem, text) in [("fullchain", chain), ("privkey", key), ("cert", chain), ("chain", chain)] {
            fs::write(archive.join(format!("{stem}{n}.pem")), text).unwrap();
            std::os::unix::fs::symlink(format!("../../archive/{name}/{stem}{n}.pem"), live.join(format!("{stem}.pem")))
                .unwrap();
        }
        (live, archive)
    }

    #[test]
    fn a_certbot_lineage_gets_the_next_archive_version_and_its_links_swapped() {
        let dir = tempfile::tempdir().unwrap();
        let (chain1, key1) = leaf_pem(&["b.test"]);
        let (live, archive) = certbot_lineage(dir.path(), "b.test", 1, &chain1, &key1);
        let (chain2, key2) = leaf_pem(&["b.test"]);
        install(&dir.path().join("live"), "b.test", &chain2, &key2).unwrap();
        assert_eq!(
            fs::read_link(live.join("fullchain.pem")).unwrap(),
            Path::new("../../archive/b.test/fullchain2.pem")
        );
        assert_eq!(fs::read_link(live.join("privkey.pem")).unwrap(), Path::new("../../archive/b.test/privkey2.pem"));
        assert_eq!(fs::read_to_string(live.join("fullchain.pem")).unwrap(), chain2);
        assert_eq!(mode(&archive.join("privkey2.pem")), 0o600);
        // The old version stays in the archive, as certbot keeps it.
        assert_eq!(fs::read_to_string(archive.join("fullchain1.pem")).unwrap(), chain1);
    }

    #[test]
    fn a_certbot_lineage_at_the_last_archive_number_is_refused_not_wrapped() {
        let dir = tempfile::tempdir().unwrap();
        let (chain, key) = leaf_pem(&["c.test"]);
        let last = u32::MAX;
        let (live, archive) = certbot_lineage(dir.path(), "c.test", last, &chain, &key);
        let e = install(&dir.path().join("live"), "c.test", &chain, &key).unwrap_err();
        assert!(e.to_string().contains("no certbot archive number left"), "{e}");
        // Nothing was written over the lineage.
        assert_eq!(fs::read_dir(&archive).unwrap().count(), 4);
        assert_eq!(
            fs::read_link(live.join("fullchain.pem")).unwrap(),
            Path::new(&format!("../../archive/c.test/fullchain{last}.pem"))
        );
    }

    #[test]
    fn accounts_are_kept_per_directory_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let p = account_path(dir.path(), "https://127.0.0.1:14000/dir");
        assert!(p.ends_with("accounts/127.0.0.1_14000_dir/account.json"));
        assert_eq!(read_account(&p).unwrap(), None);
        write_account(&p, "{}").unwrap();
        assert_eq!(read_account(&p).unwrap().as_deref(), Some("{}"));
        assert_eq!(mode(&p), 0o600);
        assert_eq!(mode(p.parent().unwrap()), 0o700);
    }
}
