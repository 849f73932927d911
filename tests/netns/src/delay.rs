//! A packet delayer (binary `delayer`), since this kernel has no `netem`: an xtables NFQUEUE
//! rule ([`crate::faults::queue_to`]) sends the packets of a link to a queue, this program holds
//! each for a fixed time and then accepts it, in arrival order. The rule uses `--queue-bypass`,
//! so packets pass undelayed if the delayer is not running (the harness never drops them).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Held packets above this are let through at once (bounded memory, like a full netem queue).
pub const MAX_HELD: usize = 20_000;

/// Runs the delayer on queue `queue_num` until killed.
pub fn run(queue_num: u16, delay: Duration) -> Result<()> {
    let mut q = nfq::Queue::open().context("opening the netfilter queue socket")?;
    q.bind(queue_num).with_context(|| format!("binding NFQUEUE {queue_num} (nfnetlink_queue)"))?;
    // Only the metadata matters: copy a header's worth, not the payload.
    q.set_copy_range(queue_num, 64).context("copy range")?;
    q.set_queue_max_len(queue_num, MAX_HELD as u32).context("queue length")?;
    // If the kernel queue overflows, accept rather than drop: the delayer must not add loss.
    q.set_fail_open(queue_num, true).context("fail open")?;
    q.set_nonblocking(true);
    eprintln!("delayer: queue {queue_num}, delay {delay:?}");
    let mut held: VecDeque<(Instant, nfq::Message)> = VecDeque::new();
    loop {
        loop {
            match q.recv() {
                Ok(mut msg) => {
                    msg.set_verdict(nfq::Verdict::Accept);
                    if held.len() >= MAX_HELD {
                        q.verdict(msg).context("verdict")?;
                    } else {
                        held.push_back((Instant::now() + delay, msg));
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => bail!("receiving from NFQUEUE {queue_num}: {e}"),
            }
        }
        let now = Instant::now();
        while held.front().is_some_and(|(due, _)| *due <= now) {
            if let Some((_, msg)) = held.pop_front() {
                q.verdict(msg).context("verdict")?;
            }
        }
        let next = held.front().map(|(due, _)| due.saturating_duration_since(now)).unwrap_or(Duration::from_millis(1));
        std::thread::sleep(next.clamp(Duration::from_micros(200), Duration::from_millis(1)));
    }
}
