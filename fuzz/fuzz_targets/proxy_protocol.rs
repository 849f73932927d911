//! PROXY v1/v2 header parsing (TCP): no panic on any input; a parsed header never claims
//! more bytes than it was given, has both addresses or neither, and its TLVs stay in bounds;
//! re-encoding a v2 header's addresses parses back to the same addresses (two IPv4-mapped ones
//! as IPv4).

use std::net::SocketAddr;

use shared::proxy_protocol::{parse, write_v2, Command, Transport, V2_SIGNATURE};

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let Ok(p) = parse(data) else { return };
        assert!(p.len <= data.len());
        assert_eq!(p.source.is_some(), p.destination.is_some());
        for tlv in p.tlvs() {
            assert!(tlv.value.len() <= p.len);
        }
        let owned = p.to_owned_header();
        assert_eq!(owned.addresses(), p.addresses());
        if data.starts_with(&V2_SIGNATURE) {
            let mut again = Vec::new();
            write_v2(&mut again, Command::Proxy, Transport::Stream, p.addresses());
            let back = parse(&again).expect("our own header parses");
            // Two IPv4-mapped IPv6 addresses are written as IPv4 (a dual-stack socket's peers).
            let canonical = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
            let want = p.addresses().map(|(src, dst)| {
                let both_mapped = src.ip().to_canonical().is_ipv4() && dst.ip().to_canonical().is_ipv4();
                if both_mapped {
                    (canonical(src), canonical(dst))
                } else {
                    (src, dst)
                }
            });
            assert_eq!(back.addresses(), want);
        }
    });
}
