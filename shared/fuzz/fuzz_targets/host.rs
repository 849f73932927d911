//! Fuzzes HTTP/1.x Host extraction: no panic at any limit, and a name found is lowercase.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shared::peek::{host, DEFAULT_MAX_HEAD};

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(name)) = host(data, DEFAULT_MAX_HEAD) {
        assert!(!name.bytes().any(|b| b.is_ascii_uppercase()));
    }
    let _ = host(data, data.len() / 2);
});
