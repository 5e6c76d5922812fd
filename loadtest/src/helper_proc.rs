//! The load tester's helper processes (the TCP forwarder, the synthetic
//! fleet responder): the same binary run with a hidden subcommand, which
//! prints one line (where it listens) and lives until its standard input
//! closes, so it never outlives the run that started it.

use std::future::Future;
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result};

use crate::relay_proc::sibling_bin;

/// Runs `serve` on a runtime of one thread in this process, exiting when
/// standard input closes.
pub fn run(serve: impl Future<Output = Result<()>>) -> Result<()> {
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        std::process::exit(0);
    });
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?
        .block_on(serve)
}

/// A helper process, killed when dropped.
pub struct HelperProc {
    child: Child,
}

impl HelperProc {
    /// Starts `tunnelgate-loadtest ARGS` (the binary beside this one) and
    /// reads its first line; `what` names it in errors.
    pub fn start(args: &[String], what: &str) -> Result<(Self, String)> {
        let mut child = Command::new(sibling_bin("tunnelgate-loadtest"))
            .args(args)
            .stdout(Stdio::piped())
            .stdin(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting the {what}"))?;
        let mut line = String::new();
        let stdout = child
            .stdout
            .take()
            .with_context(|| format!("the {what}'s stdout"))?;
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)?;
        Ok((Self { child }, line.trim().to_owned()))
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for HelperProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
