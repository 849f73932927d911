//! Fuzzes ClientHello SNI extraction: no panic at any limit, and a name found is lowercase.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shared::peek::{sni, DEFAULT_MAX_HELLO};

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(name)) = sni(data, DEFAULT_MAX_HELLO) {
        assert!(!name.bytes().any(|b| b.is_ascii_uppercase()));
    }
    let _ = sni(data, data.len() / 2);
});
