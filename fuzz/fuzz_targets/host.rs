//! HTTP/1 Host peek: no panic at any limit; a name found is lower case.

use shared::peek::{host, DEFAULT_MAX_HEAD};

fn main() {
    afl::fuzz!(|data: &[u8]| {
        if let Ok(Some(name)) = host(data, DEFAULT_MAX_HEAD) {
            assert!(!name.bytes().any(|b| b.is_ascii_uppercase()));
        }
        let _ = host(data, data.len() / 2);
    });
}
