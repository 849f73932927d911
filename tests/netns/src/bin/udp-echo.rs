//! `udp-echo --listen ADDR:PORT ... [--sink ADDR:PORT ...] [--raw] [--answer-ip IP]`: the harness's UDP backend; see
//! `netns::udp_echo`.

use netns::udp_echo::{Options, USAGE};

fn main() {
    let mut listen = Vec::new();
    let mut sinks = Vec::new();
    let mut opts = Options::default();
    let mut args = std::env::args().skip(1);
    let fail = |msg: String| -> ! {
        eprintln!("udp-echo: {msg}\n{USAGE}");
        std::process::exit(2);
    };
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => match args.next().map(|v| (v.parse(), v)) {
                Some((Ok(addr), _)) => listen.push(addr),
                Some((Err(e), v)) => fail(format!("--listen `{v}`: {e}")),
                None => fail("--listen needs a value".into()),
            },
            "--sink" => match args.next().map(|v| (v.parse(), v)) {
                Some((Ok(addr), _)) => sinks.push(addr),
                Some((Err(e), v)) => fail(format!("--sink `{v}`: {e}")),
                None => fail("--sink needs a value".into()),
            },
            "--answer-ip" => match args.next().map(|v| (v.parse(), v)) {
                Some((Ok(ip), _)) => opts.answer_ip = Some(ip),
                Some((Err(e), v)) => fail(format!("--answer-ip `{v}`: {e}")),
                None => fail("--answer-ip needs a value".into()),
            },
            "--raw" => opts.raw = true,
            other => fail(format!("unknown argument `{other}`")),
        }
    }
    if let Err(e) = netns::udp_echo::serve_with_sinks(&listen, &sinks, opts) {
        eprintln!("udp-echo: {e:#}");
        std::process::exit(1);
    }
}
