//! The fields every binary's `GET /status` opens with (both JSON schemas under `docs/`
//! require them): each binary's status type holds a [`Header`] flattened into its own fields.

use serde::Serialize;

/// Who answers and since when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Header {
    /// The version of the binary's JSON shape; bumped when a field changes meaning or goes
    /// away.
    pub schema: u32,
    /// `ingress` or `local-proxy`.
    pub binary: &'static str,
    pub version: &'static str,
    /// When this status was taken (Unix ms).
    pub now_ms: u64,
    /// When the process started (Unix ms).
    pub started_ms: u64,
    /// Runtime control is on (`admin.token_file` set).
    pub control: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Status {
        #[serde(flatten)]
        header: Header,
        extra: u8,
    }

    #[test]
    fn the_header_reads_as_top_level_fields() {
        let header = Header { schema: 1, binary: "b", version: "0.1.0", now_ms: 5, started_ms: 2, control: true };
        let json = serde_json::to_value(Status { header, extra: 7 }).expect("serializes");
        assert_eq!(
            json,
            serde_json::json!({"schema": 1, "binary": "b", "version": "0.1.0", "now_ms": 5, "started_ms": 2,
                "control": true, "extra": 7})
        );
    }
}
