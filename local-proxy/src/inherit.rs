//! The local proxy's sockets kept across a restart (`shared::inherit` has the mechanism):
//! each is named in systemd's store by its [`ListenKey`], so a restart finds every listener of
//! the plan by name, whatever its port (port 0 included): `listeners::bind_one` takes them
//! with `shared::inherit::take_tcp`/`take_udp` by [`ListenKey::fd_name`].

use std::os::fd::BorrowedFd;

use crate::listeners::{ListenKey, Origin};

pub use shared::inherit::adopt_from_env;

/// Close the inherited sockets nothing claimed; with `keep_mesh`, mesh-side ones stay for the
/// mesh listeners that come once yggdrasil answers.
/// How many were closed.
pub fn release_unclaimed(keep_mesh: bool) -> usize {
    shared::inherit::release_unclaimed(|name| keep_mesh && name.starts_with(Origin::Mesh.fd_prefix()))
}

/// Put a served socket in systemd's store (no-op outside systemd).
pub(crate) fn store(key: &ListenKey, fd: BorrowedFd<'_>) {
    shared::inherit::store(&key.fd_name(), fd);
}

/// Drop a closed socket from systemd's store (no-op outside systemd).
pub(crate) fn forget(key: &ListenKey) {
    shared::inherit::forget(&key.fd_name());
}
