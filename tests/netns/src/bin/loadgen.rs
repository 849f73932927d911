//! `loadgen`: new TCP connections at a fixed rate for a bounded time; JSON lines out.
//! See `netns::loadgen` for the options and the output.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cfg = match netns::loadgen::LoadConfig::from_args(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("loadgen: {e:#}");
            std::process::exit(2);
        }
    };
    let stdout = std::io::stdout();
    if let Err(e) = netns::loadgen::run(&cfg, &mut stdout.lock()) {
        eprintln!("loadgen: {e:#}");
        std::process::exit(1);
    }
}
