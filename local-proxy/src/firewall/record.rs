//! The name of the table this proxy installed last, kept in its state directory, so that a
//! restart deletes a table the previous run left under another name: the table renamed, or
//! `[firewall]` removed (or `enabled = false`), while the proxy was stopped. A reload does the
//! same from memory; without the record a restart could not tell our old table from anyone
//! else's, and the old one would go on enforcing an allowlist nobody keeps current (an
//! ingress node whose address changes is then dropped by it).
//!
//! Beside it, the allowlist of the last enforcing table applied (`firewall-allowed`: a line
//! `table NAME`, then one prefix a line). A restart reads the list back from the kernel's
//! table; after a reboot that table is gone, and with DNS not up yet (the home router's
//! resolver often comes up after the server does) the ingress nodes would be shut out until
//! the first answer. The file is written by this process but read as untrusted text. Its
//! modification time says when a running proxy last stood behind the list (refreshed every
//! hour while the list stays the same): a start carries it only within `saved_max_age` of that,
//! so a server powered off for months does not let in, even for the minutes DNS takes to come
//! up, addresses its ingress nodes may have given up since.
//!
//! The directory is systemd's `StateDirectory=` (`$STATE_DIRECTORY`, /var/lib/local-proxy in
//! the packaged unit); without that variable nothing is recorded and a restart deletes no
//! other table, as before.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use ipnet::IpNet;
use tracing::warn;

/// The record's file name in the state directory.
const FILE: &str = "firewall-table";
/// The last enforcing table's allowlist, in the same directory.
const ALLOWED_FILE: &str = "firewall-allowed";
/// The first line of [`ALLOWED_FILE`] is this, then the table's name.
const TABLE_LINE: &str = "table ";
/// nftables' longest table name (`NFT_NAME_MAXLEN` less its NUL).
const MAX_NAME: usize = 255;
/// How stale the allowlist file's modification time may grow while the same list is kept:
/// its age is judged in days, and a write per hour costs nothing.
const VOUCH_EVERY: Duration = Duration::from_secs(3600);

/// Where the last installed table's name is kept, if anywhere.
#[derive(Debug, Clone, Default)]
pub struct Record {
    path: Option<PathBuf>,
    /// The last enforcing table's allowlist.
    allowed: Option<PathBuf>,
    /// What `allowed` holds, as this process last wrote or found it: an apply with the same
    /// list (the table read back and installed again) does not rewrite it.
    saved: Option<String>,
    /// The last write of `allowed` failed (tried again at each check; said once).
    failing: bool,
}

impl Record {
    /// In `$STATE_DIRECTORY` (its first entry: systemd joins several with `:`), if set.
    pub fn from_env() -> Self {
        let dir = std::env::var_os("STATE_DIRECTORY")
            .and_then(|v| v.to_str().and_then(|s| s.split(':').next()).map(PathBuf::from))
            .filter(|d| d.is_absolute());
        Self::in_dir(dir.as_deref())
    }

    /// In `dir`, or nowhere.
    pub fn in_dir(dir: Option<&Path>) -> Self {
        Self {
            path: dir.map(|d| d.join(FILE)),
            allowed: dir.map(|d| d.join(ALLOWED_FILE)),
            saved: None,
            failing: false,
        }
    }

    /// The file the last enforcing table's allowlist is kept in, if anywhere.
    pub fn allowed_file(&self) -> Option<&Path> {
        self.allowed.as_deref()
    }

    /// The table the previous run installed last, if recorded. A record that cannot be read
    /// or holds no usable name is reported and taken as none.
    pub fn read(&self) -> Option<String> {
        self.read_checked().unwrap_or_else(|e| {
            warn!(error = %e, "the last firewall table's name is not known; ignored");
            None
        })
    }

    /// As [`read`](Self::read), a record that is there but cannot be read, or names no table,
    /// an error naming the file: `firewall remove` must not forget a table it cannot name.
    pub fn read_checked(&self) -> Result<Option<String>, String> {
        let Some(path) = self.path.as_ref() else { return Ok(None) };
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let name = text.trim();
        let usable = !name.is_empty() && name.len() <= MAX_NAME && !name.chars().any(|c| c.is_control());
        if !usable {
            return Err(format!("{}: not a table name", path.display()));
        }
        Ok(Some(name.to_owned()))
    }

    /// `table` is the one installed now (written whole: a new file renamed over the old).
    pub fn write(&self, table: &str) {
        let Some(path) = &self.path else { return };
        if self.read().as_deref() == Some(table) {
            return;
        }
        let tmp = path.with_extension("new");
        if let Err(e) = write_durably(path, &tmp, &format!("{table}\n")) {
            let _ = std::fs::remove_file(&tmp);
            warn!(file = %path.display(), error = %e,
                "cannot record the firewall table's name; a restart after renaming it will leave this one");
        }
    }

    /// The allowlist saved for `table`, if the file names that table and a running proxy kept
    /// it within `max_age`. The file is not trusted to be well formed: a line that is neither
    /// an address nor a prefix is reported and skipped; a file that cannot be read, or names
    /// no table, is reported and taken as none. A clock behind the file's time (a board
    /// without a real-time clock, before NTP) cannot tell its age: the list is carried.
    pub fn read_allowed(&self, table: &str, max_age: Duration) -> Option<BTreeSet<IpNet>> {
        let path = self.allowed.as_ref()?;
        let text = read_text(path, "cannot read the last firewall allowlist")?;
        if let Some(age) = file_age(path).filter(|&a| a > max_age) {
            warn!(file = %path.display(), age_hours = age.as_secs() / 3600, max_age_hours = max_age.as_secs() / 3600,
                "the last firewall allowlist is older than firewall.saved_max_age; not carried over");
            return None;
        }
        let mut lines = text.lines();
        let Some(named) = lines.next().and_then(|l| l.strip_prefix(TABLE_LINE)) else {
            warn!(file = %path.display(), "the last firewall allowlist names no table on its first line; ignored");
            return None;
        };
        // Saved for another table (renamed since): not this one's list.
        if named.trim() != table {
            return None;
        }
        Some(parse_allowed(path, lines))
    }

    /// `allowed` is the list of the enforcing table `table` just applied: written whole (a new
    /// file renamed over the old), unless the file holds it already.
    pub fn write_allowed(&mut self, table: &str, allowed: &BTreeSet<IpNet>) {
        let Some(path) = &self.allowed else { return };
        let text = allowed_text(table, allowed);
        if self.saved.is_none() {
            // First write of this process: the last run may have saved the same list.
            self.saved = std::fs::read_to_string(path).ok();
        }
        if self.saved.as_deref() == Some(text.as_str()) {
            // On disk already (written by a try whose directory sync failed, or by the last run).
            self.failing = false;
            vouch(path);
            return;
        }
        let tmp = path.with_extension("new");
        match write_durably(path, &tmp, &text) {
            Ok(()) => {
                self.saved = Some(text);
                self.failing = false;
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                self.saved = None;
                if !std::mem::replace(&mut self.failing, true) {
                    warn!(file = %path.display(), error = %e,
                        "cannot save the firewall allowlist (tried again every 10 s); a start after a reboot has none to keep while DNS is down");
                }
            }
        }
    }

    /// No table of ours is installed any more: its name and its allowlist go.
    pub fn clear(&mut self) {
        if let Err((path, e)) = self.forget() {
            warn!(file = %path.display(), error = %e, "cannot remove the last firewall table's record");
        }
    }

    /// As [`clear`](Self::clear), the first file that could not be removed returned (both are
    /// tried), for `firewall remove` to say.
    pub fn forget(&mut self) -> Result<(), (PathBuf, std::io::Error)> {
        self.saved = None;
        let mut result = Ok(());
        for path in [&self.path, &self.allowed].into_iter().flatten() {
            match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    if result.is_ok() {
                        result = Err((path.clone(), e));
                    }
                }
            }
        }
        result
    }
}

/// The file at `path`; none when it is not there, and none, reported as `failed`, when it cannot
/// be read.
fn read_text(path: &Path, failed: &str) -> Option<String> {
    match std::fs::read_to_string(path) {
        Ok(t) => Some(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            warn!(file = %path.display(), error = %e, "{failed}");
            None
        }
    }
}

/// How long ago `path` was last modified; none when that cannot be told (no file, or a clock
/// behind the file's time).
fn file_age(path: &Path) -> Option<Duration> {
    let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok()?;
    SystemTime::now().duration_since(modified).ok()
}

/// Brings `path`'s modification time to now if it is older than [`VOUCH_EVERY`]: the list it
/// holds is still the one enforced. A failure costs only an earlier expiry: logged, not retried
/// sooner.
fn vouch(path: &Path) {
    if file_age(path).is_none_or(|age| age < VOUCH_EVERY) {
        return;
    }
    let touched = std::fs::File::options().write(true).open(path).and_then(|f| f.set_modified(SystemTime::now()));
    if let Err(e) = touched {
        tracing::debug!(file = %path.display(), error = %e, "cannot refresh the saved firewall allowlist's time");
    }
}

/// `text` into `path` through `tmp`, synced before and after the rename: the records are for
/// the start after a power cut, which must not find them empty.
fn write_durably(path: &Path, tmp: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(tmp, path)?;
    match path.parent() {
        Some(dir) => std::fs::File::open(dir).and_then(|d| d.sync_all()),
        None => Ok(()),
    }
}

/// What [`ALLOWED_FILE`] holds for `allowed` of `table`: each prefix with its length, so that it
/// reads back as written.
fn allowed_text(table: &str, allowed: &BTreeSet<IpNet>) -> String {
    let mut text = format!("{TABLE_LINE}{table}\n");
    for net in allowed {
        text.push_str(&net.to_string());
        text.push('\n');
    }
    text
}

/// The prefixes in `lines`, the file's lines after the first. Blank lines are nothing; any
/// other line that is not a prefix or an address is reported (with its line number) and skipped.
fn parse_allowed<'a>(path: &Path, lines: impl Iterator<Item = &'a str>) -> BTreeSet<IpNet> {
    let mut allowed = BTreeSet::new();
    for (i, line) in lines.enumerate() {
        let text = line.trim();
        if text.is_empty() {
            continue;
        }
        match parse_net(text) {
            Some(net) => {
                allowed.insert(net);
            }
            None => warn!(file = %path.display(), line = i + 2,
                "not an address or prefix in the last firewall allowlist; line skipped"),
        }
    }
    allowed
}

/// A prefix (`192.0.2.0/24`), or an address alone as its full-length prefix.
fn parse_net(text: &str) -> Option<IpNet> {
    text.parse::<IpNet>().ok().or_else(|| text.parse::<IpAddr>().ok().map(IpNet::from))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const AGE: Duration = Duration::from_secs(30 * 86_400);

    #[test]
    fn the_name_written_is_read_back_and_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Record::in_dir(Some(dir.path()));
        assert_eq!(r.read(), None);
        r.write("lp_a");
        assert_eq!(r.read().as_deref(), Some("lp_a"));
        r.write("lp_b");
        assert_eq!(r.read().as_deref(), Some("lp_b"));
        assert!(!dir.path().join("firewall-table.new").exists());
        r.clear();
        assert_eq!(r.read(), None);
        r.clear();

        let nowhere = Record::in_dir(None);
        nowhere.write("lp_a");
        assert_eq!(nowhere.read(), None);
    }

    /// What the file holds is not trusted to be a table name: empty, too long or with a
    /// control character in it, it names no table.
    #[test]
    fn a_record_that_is_no_table_name_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let r = Record::in_dir(Some(dir.path()));
        let file = dir.path().join(FILE);
        assert_eq!(r.read_checked(), Ok(None), "no record");
        for bad in ["", "\n", "a\u{1}b", &"x".repeat(MAX_NAME + 1)] {
            std::fs::write(&file, bad).unwrap();
            assert_eq!(r.read(), None, "{bad:?}");
            // `firewall remove` is told, and keeps the record.
            let e = r.read_checked().expect_err(bad);
            assert!(e.contains(&file.display().to_string()) && e.contains("not a table name"), "{e}");
        }
        std::fs::write(&file, "lp_a\n").unwrap();
        assert_eq!(r.read().as_deref(), Some("lp_a"));
        assert_eq!(r.read_checked(), Ok(Some("lp_a".to_owned())));
        std::fs::remove_file(&file).unwrap();
        std::fs::create_dir(&file).unwrap();
        assert!(r.read_checked().is_err(), "a record that cannot be read");
    }

    fn nets(list: &[&str]) -> BTreeSet<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn the_allowlist_written_is_read_back_for_its_table_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Record::in_dir(Some(dir.path()));
        assert_eq!(r.read_allowed("lp_a", AGE), None, "nothing saved yet");
        let list = nets(&["192.0.2.7/32", "198.51.100.0/24", "2001:db8::7/128", "2001:db8:1::/48"]);
        r.write_allowed("lp_a", &list);
        assert_eq!(r.read_allowed("lp_a", AGE), Some(list.clone()));
        assert_eq!(Record::in_dir(Some(dir.path())).read_allowed("lp_a", AGE), Some(list.clone()), "another process");
        assert_eq!(r.read_allowed("lp_b", AGE), None, "saved for another table");
        assert!(!dir.path().join("firewall-allowed.new").exists());
        let text = std::fs::read_to_string(dir.path().join(ALLOWED_FILE)).unwrap();
        assert!(text.starts_with("table lp_a\n192.0.2.7/32\n"), "{text}");
        // An enforcing table with nothing in it has an empty list, not none.
        r.write_allowed("lp_b", &BTreeSet::new());
        assert_eq!(r.read_allowed("lp_b", AGE), Some(BTreeSet::new()));
        assert_eq!(r.read_allowed("lp_a", AGE), None);
    }

    /// The same list again is not written (the file changed behind the record's back stays);
    /// a new process compares with the file.
    #[test]
    fn the_same_list_is_not_written_again() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(ALLOWED_FILE);
        let list = nets(&["192.0.2.7/32"]);
        let mut r = Record::in_dir(Some(dir.path()));
        r.write_allowed("lp_a", &list);
        std::fs::write(&file, "table lp_a\n").unwrap();
        r.write_allowed("lp_a", &list);
        assert_eq!(r.read_allowed("lp_a", AGE), Some(BTreeSet::new()));
        Record::in_dir(Some(dir.path())).write_allowed("lp_a", &list);
        assert_eq!(r.read_allowed("lp_a", AGE), Some(list));
    }

    /// A list no running proxy has kept within the age bound is not carried; one kept the
    /// same has its time refreshed hourly, so it does not age while enforced.
    #[test]
    fn an_old_list_is_not_carried_and_a_kept_one_does_not_age() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(ALLOWED_FILE);
        let list = nets(&["192.0.2.7/32"]);
        let set_age = |age: Duration| {
            let f = std::fs::File::options().write(true).open(&file).unwrap();
            f.set_modified(SystemTime::now() - age).unwrap();
        };
        let age = || SystemTime::now().duration_since(std::fs::metadata(&file).unwrap().modified().unwrap()).unwrap();
        let mut r = Record::in_dir(Some(dir.path()));
        r.write_allowed("lp_a", &list);
        set_age(AGE + Duration::from_secs(3600));
        assert_eq!(r.read_allowed("lp_a", AGE), None, "older than the bound");
        assert_eq!(r.read_allowed("lp_a", AGE * 2), Some(list.clone()), "within a longer one");
        // A clock behind the file's time cannot tell: carried.
        let f = std::fs::File::options().write(true).open(&file).unwrap();
        f.set_modified(SystemTime::now() + Duration::from_secs(86_400)).unwrap();
        assert_eq!(r.read_allowed("lp_a", AGE), Some(list.clone()), "a clock behind the file");
        // Kept the same: refreshed once an hour old, not at every check.
        set_age(Duration::from_secs(600));
        r.write_allowed("lp_a", &list);
        assert!(age() >= Duration::from_secs(600), "a recent time is left alone");
        set_age(AGE + Duration::from_secs(3600));
        r.write_allowed("lp_a", &list);
        assert!(age() < Duration::from_secs(60), "an old one is brought to now: {:?}", age());
        assert_eq!(r.read_allowed("lp_a", AGE), Some(list.clone()));
        // A new process finding the same list on disk refreshes it too.
        set_age(Duration::from_secs(7200));
        Record::in_dir(Some(dir.path())).write_allowed("lp_a", &list);
        assert!(age() < Duration::from_secs(60));
    }

    /// The file is not trusted to be well formed: bad lines go, the good ones stay; with no
    /// table line, or not text at all, there is no list.
    #[test]
    fn bad_lines_are_skipped_and_good_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let r = Record::in_dir(Some(dir.path()));
        let file = dir.path().join(ALLOWED_FILE);
        let text = "table lp_a\n192.0.2.7/32\nnot an address\n\n2001:db8::7\n10.0.0.0/33\n  198.51.100.0/24  \n\
                    192.0.2.7/32 extra\n";
        std::fs::write(&file, text).unwrap();
        assert_eq!(r.read_allowed("lp_a", AGE), Some(nets(&["192.0.2.7/32", "2001:db8::7/128", "198.51.100.0/24"])));
        for bad in ["", "\n", "lp_a\n192.0.2.7/32\n", "table\n192.0.2.7/32\n", "tablelp_a\n192.0.2.7/32\n"] {
            std::fs::write(&file, bad).unwrap();
            assert_eq!(r.read_allowed("lp_a", AGE), None, "{bad:?}");
        }
        std::fs::write(&file, b"table lp_a\n192.0.2.7/32\n\xff\xfe\n").unwrap();
        assert_eq!(r.read_allowed("lp_a", AGE), None, "not UTF-8");
    }

    #[test]
    fn clear_removes_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Record::in_dir(Some(dir.path()));
        let list = nets(&["192.0.2.7/32", "2001:db8::7/128"]);
        r.write("lp_a");
        r.write_allowed("lp_a", &list);
        assert!(dir.path().join(FILE).exists() && dir.path().join(ALLOWED_FILE).exists());
        r.clear();
        assert!(!dir.path().join(FILE).exists());
        assert!(!dir.path().join(ALLOWED_FILE).exists());
        assert_eq!((r.read(), r.read_allowed("lp_a", AGE)), (None, None));
        // Cleared, the same list is written again (not taken as on disk already).
        r.write_allowed("lp_a", &list);
        assert_eq!(r.read_allowed("lp_a", AGE), Some(list));
        r.clear();
        r.clear();
        // A file that cannot be removed is named; the other is removed all the same.
        r.write("lp_a");
        std::fs::create_dir(dir.path().join(ALLOWED_FILE)).unwrap();
        let (path, _) = r.forget().expect_err("a directory in the allowlist's place");
        assert_eq!(path, dir.path().join(ALLOWED_FILE));
        assert!(!dir.path().join(FILE).exists());
    }

    #[test]
    fn nowhere_writes_nothing() {
        let mut nowhere = Record::in_dir(None);
        assert_eq!(nowhere.allowed_file(), None);
        nowhere.write("lp_a");
        nowhere.write_allowed("lp_a", &nets(&["192.0.2.7/32"]));
        assert_eq!((nowhere.read(), nowhere.read_allowed("lp_a", AGE)), (None, None));
        assert!(!Path::new(FILE).exists() && !Path::new(ALLOWED_FILE).exists());
        nowhere.clear();
    }
}
