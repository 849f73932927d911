//! ClientHello SNI peek: no panic at any limit; a name found is lower case and the same
//! whether the limit is the default or exactly the input's length.

use shared::peek::{sni, DEFAULT_MAX_HELLO};

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let full = sni(data, DEFAULT_MAX_HELLO);
        if let Ok(Some(name)) = &full {
            assert!(!name.bytes().any(|b| b.is_ascii_uppercase()));
            if data.len() <= DEFAULT_MAX_HELLO {
                assert_eq!(sni(data, data.len().max(1)).ok().flatten().as_deref(), Some(name.as_ref()));
            }
        }
        let _ = sni(data, data.len() / 2);
    });
}
