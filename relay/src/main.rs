//! `tunnelgate-relay`: serve; manage join tokens, API keys, client
//! certificates and nodes in the state dir (a serving relay picks the
//! changes up); or run the one-command quickstart (a loopback relay plus an
//! agent for the local daemon).

mod cli;

use anyhow::Context;
use clap::Parser;
use tokio_util::sync::CancellationToken;
use tunnelgate_relay::{Config, Relay};

use cli::{Cli, Command};

// jemalloc rather than glibc's malloc: after a burst of streams the relay's
// freed buffers sit in glibc's per-thread arenas and RSS stayed at twice its
// idle level (TLS/TCP, 5,000 agents); jemalloc hands them back within
// seconds, and idle QUIC sessions cost less with it.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let _log = tunnelgate_session::process::init_tracing(cli.log_format);
    match cli.command {
        Command::Serve(args) => {
            let config = Config::resolve(*args).context("invalid configuration")?;
            // Before the listening line: whoever reads it may stop us at once.
            let shutdown = CancellationToken::new();
            tunnelgate_session::process::stop_on_signals(shutdown.clone());
            let relay = Relay::bind(config)
                .await
                .context("cannot start the relay")?;
            println!("{}", relay.listening());
            relay.run(shutdown).await;
        }
        Command::Token(cmd) => cli::token(cmd).await?,
        Command::ApiKey(cmd) => cli::api_key(cmd).await?,
        Command::ClientCert(cmd) => cli::client_cert(cmd).await?,
        Command::Node(cmd) => cli::node(cmd).await?,
        Command::Ca(cmd) => cli::ca(cmd)?,
        Command::Healthcheck { url } => cli::healthcheck(&url)?,
        #[cfg(feature = "quickstart")]
        Command::Quickstart(args) => cli::quickstart::run(args).await?,
    }
    Ok(())
}
