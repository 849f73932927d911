//! PROXY v2 on UDP: each datagram may start with a DGRAM header (the local proxy strips it,
//! the ingress writes it). No panic on any datagram; the payload split stays in bounds; a
//! header we write in front of any payload parses back to the same addresses and payload.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use shared::proxy_protocol::{parse, write_v2, Command, Transport, V2_SIGNATURE};

fn main() {
    afl::fuzz!(|data: &[u8]| {
        if data.starts_with(&V2_SIGNATURE) {
            if let Ok(p) = parse(data) {
                let payload = &data[p.len..];
                assert_eq!(p.len + payload.len(), data.len());
            }
        }
        // Writing side: the first bytes choose the addresses, the rest is the payload.
        if data.len() >= 36 {
            let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
            let v6 = |b: &[u8]| Ipv6Addr::from(<[u8; 16]>::try_from(b).unwrap_or([0; 16]));
            let (src, dst) = if data[0] & 1 == 0 {
                let v4 = |b: &[u8]| IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]));
                (
                    SocketAddr::new(v4(&data[1..5]), port(&data[5..7])),
                    SocketAddr::new(v4(&data[7..11]), port(&data[11..13])),
                )
            } else {
                (
                    SocketAddr::new(IpAddr::V6(v6(&data[1..17])), port(&data[17..19])),
                    SocketAddr::new(IpAddr::V6(v6(&data[19..35])), 0),
                )
            };
            let payload = &data[36..];
            let mut dgram = Vec::new();
            write_v2(&mut dgram, Command::Proxy, Transport::Datagram, Some((src, dst)));
            let header_len = dgram.len();
            dgram.extend_from_slice(payload);
            let p = parse(&dgram).expect("our own datagram header parses");
            assert_eq!(p.len, header_len);
            // Two IPv4-mapped IPv6 addresses are written as IPv4 (a dual-stack socket's peers).
            let canonical = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
            let both_mapped = src.ip().to_canonical().is_ipv4() && dst.ip().to_canonical().is_ipv4();
            let want = if both_mapped { (canonical(src), canonical(dst)) } else { (src, dst) };
            assert_eq!(p.addresses(), Some(want));
            assert_eq!(&dgram[p.len..], payload);
        }
    });
}
