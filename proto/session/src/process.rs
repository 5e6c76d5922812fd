//! Process plumbing both binaries share: logging set-up and the signal
//! policy (first SIGTERM or Ctrl-C stops gracefully, a second exits at once).

use tokio_util::sync::CancellationToken;

/// What is logged unless `RUST_LOG` says otherwise. yamux warns each
/// time it cannot say goodbye on a connection whose peer already left (a
/// draining relay's TLS/TCP agents, thousands at once): harmless, and the
/// session's own end is logged by us with its reason.
pub const DEFAULT_LOG_FILTER: &str = "info,yamux=error";

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Lines for people: coloured only on a terminal, and never when
    /// `NO_COLOR` is set.
    #[default]
    Text,
    /// One JSON object per line, every field at the top level, for log
    /// shippers.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!("log format {other:?} is not text or json")),
        }
    }
}

/// Whether text logs are coloured: on a terminal, unless `NO_COLOR` is
/// set to anything (<https://no-color.org>).
pub fn colour(is_terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Log lines held for the writer thread before new ones are dropped (and
/// counted, [`dropped_log_lines`]): a slow disk or a stalled reader of
/// stderr must not stall calls.
const LOG_BACKLOG: usize = 64 * 1024;

static DROPPED: std::sync::OnceLock<tracing_appender::non_blocking::ErrorCounter> =
    std::sync::OnceLock::new();

/// Log lines dropped so far because the writer thread fell
/// [`LOG_BACKLOG`] lines behind.
pub fn dropped_log_lines() -> usize {
    DROPPED.get().map_or(0, |c| c.dropped_lines())
}

/// Keeps the log writer thread running; dropping it writes what is
/// queued and stops it (hold it for the life of `main`).
#[must_use = "dropping the guard stops the log writer"]
pub struct LogGuard(#[allow(dead_code)] tracing_appender::non_blocking::WorkerGuard);

/// Logs to stderr at [`DEFAULT_LOG_FILTER`], or as `RUST_LOG` says, in
/// `format`. Lines are written by a thread of their own, so a call's
/// audit line costs the call a queue push, not a `write`.
pub fn init_tracing(format: LogFormat) -> LogGuard {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    let colour = colour(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR"),
    );
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(LOG_BACKLOG)
        .thread_name("tunnelgate-log")
        .finish(std::io::stderr());
    let _ = DROPPED.set(writer.error_counter());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Text => builder.with_ansi(colour).init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    LogGuard(guard)
}

/// Cancels `cancel` on the first SIGTERM or SIGINT; exits the process
/// with status 130 on the second, for an operator who will not wait.
///
/// The handlers are in place when this returns, not when a spawned task
/// first runs: a process that then says it is up (the relay's listening
/// line) and is stopped at once must stop gracefully, not die of the
/// signal's default action.
pub fn stop_on_signals(cancel: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::warn!("cannot install signal handlers; stop this process with SIGKILL");
        return;
    };
    tokio::spawn(async move {
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        tracing::info!("stopping; send the signal again to exit at once");
        cancel.cancel();
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        std::process::exit(130);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(!colour(false, None));
        assert!(!colour(true, Some("1".into())));
        // An empty NO_COLOR is as good as unset, as no-color.org says.
        assert!(colour(true, Some("".into())));
        assert_eq!("json".parse(), Ok(LogFormat::Json));
        assert!("yaml".parse::<LogFormat>().is_err());
    }

    /// On a runtime whose one thread is busy in this test, a spawned task
    /// never ran before the signal: it took the default action and killed
    /// the process.
    #[tokio::test(flavor = "current_thread")]
    async fn a_sigterm_right_after_the_handlers_are_set_cancels_and_kills_nothing() {
        let cancel = CancellationToken::new();
        stop_on_signals(cancel.clone());
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &std::process::id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        tokio::time::timeout(std::time::Duration::from_secs(10), cancel.cancelled())
            .await
            .unwrap();
    }

    #[test]
    fn the_default_log_filter_parses() {
        // `EnvFilter::new` drops a directive it cannot parse without a word.
        tracing_subscriber::EnvFilter::try_new(DEFAULT_LOG_FILTER).unwrap();
    }
}
