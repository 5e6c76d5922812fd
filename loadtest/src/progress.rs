//! Counters every scenario updates, and the live progress line on stderr.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// What a running scenario has done so far.
#[derive(Debug, Default)]
pub struct Counters {
    /// Agents the relay lists as connected.
    pub connected: AtomicU64,
    /// Calls that succeeded.
    pub ok: AtomicU64,
    /// Calls that failed.
    pub failed: AtomicU64,
    /// Body bytes moved.
    pub bytes: AtomicU64,
}

impl Counters {
    /// Adds one to `counter`.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Prints one updating line per second until `stop`; then ends the line.
pub fn spawn_progress(
    scenario: &'static str,
    counters: Arc<Counters>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let started = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = stop.cancelled() => break,
            }
            let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
            eprint!(
                "\r[{scenario}] {:>6.1}s  agents {:>6}  calls ok {:>8}  failed {:>5}  {:>10.1} MiB ",
                started.elapsed().as_secs_f64(),
                g(&counters.connected),
                g(&counters.ok),
                g(&counters.failed),
                g(&counters.bytes) as f64 / (1024.0 * 1024.0)
            );
            let _ = std::io::stderr().flush();
        }
        eprintln!();
    })
}
