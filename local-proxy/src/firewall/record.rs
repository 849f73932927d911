//! The name of the table this proxy installed last, kept in its state directory, so that a
//! restart deletes a table the previous run left under another name: the table renamed, or
//! `[firewall]` removed (or `enabled = false`), while the proxy was stopped. A reload does the
//! same from memory; without the record a restart could not tell our old table from anyone
//! else's, and the old one would go on enforcing an allowlist nobody keeps current (an
//! ingress node whose address changes is then dropped by it).
//!
//! The directory is systemd's `StateDirectory=` (`$STATE_DIRECTORY`, /var/lib/local-proxy in
//! the packaged unit); without that variable nothing is recorded and a restart deletes no
//! other table, as before.

use std::path::{Path, PathBuf};

use tracing::warn;

/// The record's file name in the state directory.
const FILE: &str = "firewall-table";
/// nftables' longest table name (`NFT_NAME_MAXLEN` less its NUL).
const MAX_NAME: usize = 255;

/// Where the last installed table's name is kept, if anywhere.
#[derive(Debug, Clone, Default)]
pub struct Record {
    path: Option<PathBuf>,
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
        Self { path: dir.map(|d| d.join(FILE)) }
    }

    /// The table the previous run installed last, if recorded. A record that cannot be read
    /// or holds no usable name is reported and taken as none.
    pub fn read(&self) -> Option<String> {
        let path = self.path.as_ref()?;
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                warn!(file = %path.display(), error = %e, "cannot read the last firewall table's name");
                return None;
            }
        };
        let name = text.trim();
        let usable = !name.is_empty() && name.len() <= MAX_NAME && !name.chars().any(|c| c.is_control());
        if !usable {
            warn!(file = %path.display(), "the last firewall table's name in this file is not a table name; ignored");
            return None;
        }
        Some(name.to_owned())
    }

    /// `table` is the one installed now (written whole: a new file renamed over the old).
    pub fn write(&self, table: &str) {
        let Some(path) = &self.path else { return };
        if self.read().as_deref() == Some(table) {
            return;
        }
        let tmp = path.with_extension("new");
        let written = std::fs::write(&tmp, format!("{table}\n")).and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            warn!(file = %path.display(), error = %e,
                "cannot record the firewall table's name; a restart after renaming it will leave this one");
        }
    }

    /// No table of ours is installed any more.
    pub fn clear(&self) {
        let Some(path) = &self.path else { return };
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => warn!(file = %path.display(), error = %e, "cannot remove the last firewall table's name"),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_name_written_is_read_back_and_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let r = Record::in_dir(Some(dir.path()));
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
        for bad in ["", "\n", "a\u{1}b", &"x".repeat(MAX_NAME + 1)] {
            std::fs::write(&file, bad).unwrap();
            assert_eq!(r.read(), None, "{bad:?}");
        }
        std::fs::write(&file, "lp_a\n").unwrap();
        assert_eq!(r.read().as_deref(), Some("lp_a"));
    }
}
