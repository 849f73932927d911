//! Fuzzes the PROXY v1/v2 parser: no panic, and a parsed header never claims more bytes than
//! it was given.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shared::proxy_protocol::parse;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = parse(data) {
        assert!(p.len <= data.len());
        assert_eq!(p.source.is_some(), p.destination.is_some());
        for tlv in p.tlvs() {
            let _ = (tlv.kind, tlv.value.len());
        }
    }
});
