//! `idle-holder --target ADDR:PORT --count N [--hold-ms MS]`: opens N TCP connections to the
//! target, prints `ready <opened> <failed>` and holds them idle (sending nothing) until the
//! hold time passes or it is killed. For measuring a proxy's memory per idle connection.
//! `opened` counts the connects that succeeded: it never reads, so it does not see a proxy
//! that later closes some (out of connection slots); the bench counts those the proxy holds.

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut target: Option<SocketAddr> = None;
    let mut count = 0usize;
    let mut hold = Duration::from_secs(60);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let v = it.next().map(String::as_str).unwrap_or("");
        match a.as_str() {
            "--target" => target = v.parse().ok(),
            "--count" => count = v.parse().unwrap_or(0),
            "--hold-ms" => hold = Duration::from_millis(v.parse().unwrap_or(60_000)),
            _ => {
                eprintln!("usage: idle-holder --target ADDR:PORT --count N [--hold-ms MS]");
                std::process::exit(2);
            }
        }
    }
    let Some(target) = target else {
        eprintln!("idle-holder: --target ADDR:PORT is required");
        std::process::exit(2);
    };
    // Bounded: at most 20,000 (the open-files limit here) and one minute of connecting.
    let count = count.min(20_000);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut held = Vec::with_capacity(count);
    let mut failed = 0usize;
    while held.len() + failed < count && Instant::now() < deadline {
        match TcpStream::connect_timeout(&target, Duration::from_secs(2)) {
            Ok(s) => held.push(s),
            Err(_) => failed += 1,
        }
    }
    println!("ready {} {}", held.len(), failed);
    std::thread::sleep(hold);
    drop(held);
}
