//! `delayer --queue N --delay-ms D`: holds every packet of NFQUEUE N for D ms; see `netns::delay`.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut queue = None;
    let mut delay = None;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        match (flag.as_str(), it.next().map(|v| v.parse::<u64>())) {
            ("--queue", Some(Ok(v))) if v <= u16::MAX as u64 => queue = Some(v as u16),
            ("--delay-ms", Some(Ok(v))) => delay = Some(std::time::Duration::from_millis(v)),
            _ => {
                eprintln!("usage: delayer --queue N --delay-ms D");
                std::process::exit(2);
            }
        }
    }
    let (Some(queue), Some(delay)) = (queue, delay) else {
        eprintln!("usage: delayer --queue N --delay-ms D");
        std::process::exit(2);
    };
    if let Err(e) = netns::delay::run(queue, delay) {
        eprintln!("delayer: {e:#}");
        std::process::exit(1);
    }
}
