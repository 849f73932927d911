//! `netprobe tcp|udp --to ADDR [--from IP] [--proxy-v2 CLIENT] [--timeout-ms N] [--send TEXT]`
//! and `netprobe serve [--tcp ADDR]... [--udp ADDR]...`; see `netns::netprobe`.

use std::net::SocketAddr;
use std::time::Duration;

use netns::netprobe::{self, Probe};

fn usage() -> ! {
    eprintln!(
        "usage: netprobe tcp|udp --to ADDR [--from IP] [--proxy-v2 CLIENT_ADDR] [--timeout-ms N] [--send TEXT]\n       \
         netprobe serve [--tcp ADDR]... [--udp ADDR]..."
    );
    std::process::exit(64);
}

fn parse<T: std::str::FromStr>(flag: &str, v: Option<String>) -> T {
    match v.as_deref().map(str::parse) {
        Some(Ok(x)) => x,
        _ => {
            eprintln!("netprobe: bad or missing value for {flag}");
            usage()
        }
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_default();
    match mode.as_str() {
        "tcp" | "udp" => {
            let mut to: Option<SocketAddr> = None;
            let mut p = Probe::tcp(SocketAddr::from(([0, 0, 0, 0], 0)));
            p.udp = mode == "udp";
            while let Some(flag) = args.next() {
                match flag.as_str() {
                    "--to" => to = Some(parse(&flag, args.next())),
                    "--from" => p.from = Some(parse(&flag, args.next())),
                    "--proxy-v2" => p.proxy_v2_client = Some(parse(&flag, args.next())),
                    "--timeout-ms" => p.timeout = Duration::from_millis(parse(&flag, args.next())),
                    "--send" => p.send = args.next().unwrap_or_else(|| usage()),
                    _ => usage(),
                }
            }
            p.to = to.unwrap_or_else(|| usage());
            std::process::exit(netprobe::client(&p));
        }
        "serve" => {
            let (mut tcp, mut udp) = (Vec::new(), Vec::new());
            while let Some(flag) = args.next() {
                match flag.as_str() {
                    "--tcp" => tcp.push(parse(&flag, args.next())),
                    "--udp" => udp.push(parse(&flag, args.next())),
                    _ => usage(),
                }
            }
            if let Err(e) = netprobe::serve(&tcp, &udp) {
                eprintln!("netprobe: {e:#}");
                std::process::exit(1);
            }
        }
        _ => usage(),
    }
}
