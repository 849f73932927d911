//! `rootfs [CACHE]`: builds the booted-host tests' bookworm root filesystem
//! ([`netns::nspawn::Rootfs`]) into their cache unless it is there already, and prints its path.
//! CACHE defaults to the one the tests use, `<target>/nspawn` beside this binary's profile
//! directory.
//!
//! scripts/test starts it beside the loopback tests, which leave the cores half idle: built by
//! the roll-out test instead (the longest of the namespace scenarios, and the first to start),
//! it took two minutes of that test under the other scenarios' load, with every other
//! booted-host test waiting on the same lock.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use netns::nspawn::{self, Rootfs};

fn cache() -> Result<PathBuf> {
    if let Some(dir) = std::env::args_os().nth(1) {
        return Ok(PathBuf::from(dir));
    }
    let exe = std::env::current_exe().context("finding this binary's path")?;
    // <target>/<profile>/rootfs -> <target>/nspawn, as `common::cache_dir` in the tests.
    let target = exe.parent().and_then(|p| p.parent()).context("this binary is not in a cargo target directory")?;
    Ok(target.join("nspawn"))
}

fn run() -> Result<()> {
    nspawn::require()?;
    let cache = cache()?;
    let rootfs = Rootfs::get(&cache).with_context(|| format!("root filesystem in {}", cache.display()))?;
    match rootfs.built_in {
        Some(d) => println!("built {} in {:.1}s", rootfs.path.display(), d.as_secs_f64()),
        None => println!("cached {}", rootfs.path.display()),
    }
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rootfs: {e:#}");
            ExitCode::FAILURE
        }
    }
}
