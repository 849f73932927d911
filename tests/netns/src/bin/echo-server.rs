//! `echo-server --listen ADDR:PORT ...`: the harness backend; see `netns::echo`.

fn main() {
    let mut listen = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match (a.as_str(), args.next()) {
            ("--listen", Some(v)) => match v.parse() {
                Ok(addr) => listen.push(addr),
                Err(e) => {
                    eprintln!("echo-server: --listen `{v}`: {e}");
                    std::process::exit(2);
                }
            },
            _ => {
                eprintln!("usage: echo-server --listen ADDR:PORT [--listen ...]");
                std::process::exit(2);
            }
        }
    }
    if let Err(e) = netns::echo::serve(&listen) {
        eprintln!("echo-server: {e:#}");
        std::process::exit(1);
    }
}
