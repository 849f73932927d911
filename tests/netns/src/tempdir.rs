//! A temp dir guard: created under the system temp dir with the run's tag in its name, removed on
//! drop unless `LBT_KEEP=1` is set (then its path is printed, for looking at logs).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Owns a directory; removes it (recursively) on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `<tmp>/<tag>-<suffix>`; `tag` should come from [`crate::unique_tag`].
    pub fn new(tag: &str) -> Result<Self> {
        let path = std::env::temp_dir().join(format!("{tag}-{}", crate::unix_ms()));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("LBT_KEEP").is_some_and(|v| v == "1") {
            eprintln!("LBT_KEEP=1: keeping {}", self.path.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
