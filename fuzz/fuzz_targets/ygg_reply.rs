//! The yggdrasil admin-socket reply parser: no panic on any bytes, whether read whole or cut
//! anywhere (the exchange stops as soon as a whole JSON value has arrived).

use shared::ygg::sans_io::{decode_peers, decode_self, reply_complete};

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let _ = decode_self(data);
        let _ = decode_peers(data);
        // Completeness only grows as bytes arrive... unless a later byte makes it a syntax
        // error, which also counts as complete: check monotonicity on a cut.
        let cut = data.len() / 2;
        if reply_complete(&data[..cut]) {
            assert!(reply_complete(data));
        }
    });
}
