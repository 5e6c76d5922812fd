//! Process plumbing both binaries share: logging set-up and the signal
//! policy (first SIGTERM or Ctrl-C stops gracefully, a second exits at once).

use tokio_util::sync::CancellationToken;

/// What is logged unless `RUST_LOG` says otherwise. yamux warns each
/// time it cannot say goodbye on a connection whose peer already left (a
/// draining relay's TLS/TCP agents, thousands at once): harmless, and the
/// session's own end is logged by us with its reason.
pub const DEFAULT_LOG_FILTER: &str = "info,yamux=error";

/// Logs to stderr at [`DEFAULT_LOG_FILTER`], or as `RUST_LOG` says.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// Cancels `cancel` on the first SIGTERM or SIGINT; exits the process
/// with status 130 on the second, for an operator who will not wait.
pub async fn stop_on_signals(cancel: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::warn!("cannot install signal handlers; stop this process with SIGKILL");
        return;
    };
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    tracing::info!("stopping; send the signal again to exit at once");
    cancel.cancel();
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    std::process::exit(130);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_log_filter_parses() {
        // `EnvFilter::new` drops a directive it cannot parse without a word.
        tracing_subscriber::EnvFilter::try_new(DEFAULT_LOG_FILTER).unwrap();
    }
}
