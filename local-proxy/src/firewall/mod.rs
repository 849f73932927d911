//! The nftables allowlist kept from the ingress nodes' DNS names: only they (and static
//! addresses) reach the protected WAN-side ports; the same list feeds the PROXY-header trust set.
//!
//! Pieces: `settings` (the `[firewall]` section), `shared::dns` (sans-io names → addresses
//! with expiry, and the hickory lookups), `ruleset` (the table as data), `nft` (data → one atomic
//! netlink batch via nftnl), `readback` (the kernel's table → data, for `firewall show` and
//! tests), `driver` (the task tying them together). Only our own table is ever touched.

mod driver;
pub mod netlink;
pub mod nft;
pub mod readback;
mod record;
pub mod ruleset;
pub mod status;
/// The `[firewall]` settings live with the rest of the configuration (the config is a
/// leaf below the firewall); this path stays for the firewall's own modules.
pub use crate::config::firewall as settings;
/// Names → addresses (sans-io) and the lookups, shared with the ingress's paths by name.
pub use shared::dns as tracker;

pub use driver::{start, Control};
pub use readback::read_table;
pub use ruleset::TableSpec;
pub use settings::Settings;
pub use shared::dns::outcome_of;

/// Source name under which the allowlist feeds [`crate::trust::TrustedPeers`].
pub const TRUST_SOURCE: &str = "firewall";

/// Why the firewall could not be set up or updated.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The netlink socket failed (no CAP_NET_ADMIN, no nf_tables in the kernel, ...).
    #[error("netlink: {what}: {source}")]
    Netlink { what: &'static str, source: std::io::Error },
    /// The kernel refused the batch; nothing of it was applied.
    #[error("nftables refused the update (nothing applied): {source}")]
    Refused { source: std::io::Error },
    /// The kernel answered a query with an error (errno).
    #[error("nftables query failed: {}", std::io::Error::from_raw_os_error(*.errno))]
    Kernel { errno: i32 },
    /// A reply could not be decoded.
    #[error("malformed netlink reply: {0}")]
    Decode(String),
    /// The table description cannot be written.
    #[error("cannot encode the table: {0}")]
    Encode(String),
    /// The resolver could not be set up.
    #[error("resolver: {0}")]
    Resolver(String),
    /// A blocking netlink call did not return in time.
    #[error("netlink call timed out")]
    Timeout,
}

/// Replace table `spec.name` with `spec` in one transaction (blocking, short).
pub fn apply(spec: &TableSpec) -> Result<(), Error> {
    let batch = nft::replace_batch(spec)?;
    netlink::send_batch(&batch.bytes, &batch.acks)
}

/// Replace table `spec.name` with `spec` and delete table `old` in the same transaction: the
/// new table is in force before the old one goes (a renamed table; blocking, short).
pub fn swap(spec: &TableSpec, old: &str) -> Result<(), Error> {
    let batch = nft::swap_batch(spec, Some(old))?;
    netlink::send_batch(&batch.bytes, &batch.acks)
}

/// Delete table `inet <name>`, present or not (blocking, short).
pub fn remove(name: &str) -> Result<(), Error> {
    let batch = nft::remove_batch(name)?;
    netlink::send_batch(&batch.bytes, &batch.acks)
}

/// `firewall remove` (the package's prerm): table `name`, and with `state_dir` (the unit's
/// StateDirectory=) the table the last run recorded there, which is another when the config's
/// table was renamed or `[firewall]` taken out without a reload; once both are gone, the
/// record and the saved allowlist too (a reinstall must not carry the old list over as after
/// a reboot). A failure, or a record that cannot be read, leaves the record, so that a second
/// try still finds the table. Returns the tables removed (present or not); the error names
/// what failed.
pub fn remove_recorded(name: &str, state_dir: Option<&std::path::Path>) -> Result<Vec<String>, String> {
    let mut record = state_dir.map(|d| record::Record::in_dir(Some(d)));
    let recorded = record.as_ref().map_or(Ok(None), record::Record::read_checked);
    let mut tables = vec![name.to_owned()];
    tables.extend(recorded.clone().ok().flatten().filter(|t| t != name));
    for table in &tables {
        remove(table).map_err(|e| format!("removing table inet {table}: {e}"))?;
    }
    recorded.map_err(|e| format!("table inet {name} removed, but the last run's table is not known: {e}"))?;
    if let Some(record) = &mut record {
        record.forget().map_err(|(path, e)| format!("removing {}: {e}", path.display()))?;
    }
    Ok(tables)
}
