//! What the firewall task last knew, for `/status` and the status page: per ingress name its
//! addresses, last answer and failed lookups, and whether the table is enforcing. The task
//! writes it where it exports the same facts as metrics; readers take a copy.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Mutex;

/// One ingress name as the firewall tracks it.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct NameStatus {
    pub name: String,
    /// The addresses the allowlist holds for it now.
    pub addresses: Vec<IpAddr>,
    /// When a lookup last answered (Unix ms); null: not since start.
    pub last_answer_ms: Option<u64>,
    /// Failed or timed-out lookups since start (the last known addresses were kept).
    pub failures: u64,
    pub last_error: Option<String>,
}

/// The table and the names.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct FirewallStatus {
    /// Protected ports are filtered (false: open until a first DNS answer, or not applied yet).
    pub enforcing: bool,
    /// Addresses in the applied allowlist.
    pub allowed: usize,
    pub names: Vec<NameStatus>,
}

#[derive(Default)]
struct Known {
    enforcing: bool,
    allowed: usize,
    names: BTreeMap<String, NameStatus>,
}

/// None until the firewall task first reports (no `[firewall]`, or not started yet).
static STATE: Mutex<Option<Known>> = Mutex::new(None);

/// A lookup of `name` finished: `error` if it failed; `addresses` is what the list holds now.
pub fn lookup(name: &str, error: Option<&str>, addresses: impl IntoIterator<Item = IpAddr>) {
    let mut guard = STATE.lock().unwrap_or_else(|e| e.into_inner());
    let known = guard.get_or_insert_with(Known::default);
    let entry = known
        .names
        .entry(name.to_owned())
        .or_insert_with(|| NameStatus { name: name.to_owned(), ..Default::default() });
    entry.addresses = addresses.into_iter().collect();
    match error {
        Some(e) => {
            entry.failures += 1;
            entry.last_error = Some(e.to_owned());
        }
        None => {
            entry.last_answer_ms = Some(shared::admin::page::now_ms());
            entry.last_error = None;
        }
    }
}

/// A table was applied.
pub fn applied(enforcing: bool, allowed: usize) {
    let mut guard = STATE.lock().unwrap_or_else(|e| e.into_inner());
    let known = guard.get_or_insert_with(Known::default);
    known.enforcing = enforcing;
    known.allowed = allowed;
}

/// A copy for a status page; `None` before the firewall task reported.
pub fn snapshot() -> Option<FirewallStatus> {
    let guard = STATE.lock().unwrap_or_else(|e| e.into_inner());
    guard.as_ref().map(|k| FirewallStatus {
        enforcing: k.enforcing,
        allowed: k.allowed,
        names: k.names.values().cloned().collect(),
    })
}
