//! `udpflow`: UDP flows (one source port each) sending numbered datagrams at a fixed rate for a
//! bounded time; a JSON summary out. See `netns::udpflow` for the options and the output.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cfg = match netns::udpflow::FlowConfig::from_args(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("udpflow: {e:#}");
            std::process::exit(2);
        }
    };
    let stdout = std::io::stdout();
    if let Err(e) = netns::udpflow::run(&cfg, &mut stdout.lock()) {
        eprintln!("udpflow: {e:#}");
        std::process::exit(1);
    }
}
