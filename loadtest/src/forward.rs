//! A plain TCP forwarder in a process of its own: the least any extra
//! process on a call's path can cost (a wake-up and two socket copies
//! each way, no parsing, no encryption). `peer-hop` puts one in front of
//! the relay holding the session, so a run shows the relay-to-relay
//! hop's cost beside this floor, measured on the same machine at the
//! same moment.
//!
//! Only for measurement: it forwards to one fixed loopback address and
//! does nothing a relay must (authentication, routing, limits).

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result};
use tokio::net::{TcpListener, TcpStream};

use crate::relay_proc::{sibling_bin, Sched};

/// Runs the forwarder in this process: accepts on `listen`, prints the
/// bound address on one line, and copies each connection both ways to
/// `to` until its client or `to` closes. One thread, as a minimal
/// forwarder would be. Exits when its standard input closes, so it never
/// outlives the run that started it.
pub fn serve(listen: SocketAddr, to: SocketAddr) -> Result<()> {
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        std::process::exit(0);
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(listen).await?;
        println!("{}", listener.local_addr()?);
        loop {
            let (mut client, _) = listener.accept().await?;
            tokio::spawn(async move {
                let _ = client.set_nodelay(true);
                let Ok(mut upstream) = TcpStream::connect(to).await else {
                    return;
                };
                let _ = upstream.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
    })
}

/// A forwarder process to `to`, killed when dropped.
pub struct ForwardProc {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl ForwardProc {
    /// Starts `tunnelgate-loadtest tcp-forward` (the binary beside this
    /// one) to `to` on a free loopback port.
    pub fn start(to: SocketAddr) -> Result<Self> {
        let mut child = Command::new(sibling_bin("tunnelgate-loadtest"))
            .args(["tcp-forward", "--listen", "127.0.0.1:0", "--to"])
            .arg(to.to_string())
            .stdout(Stdio::piped())
            .stdin(Stdio::piped())
            .spawn()
            .context("starting the TCP forwarder")?;
        let mut line = String::new();
        let stdout = child.stdout.take().context("the forwarder's stdout")?;
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)?;
        let addr = line
            .trim()
            .parse()
            .with_context(|| format!("the forwarder said {line:?}, not its address"))?;
        Ok(Self { child, addr })
    }

    /// Its exact CPU time and context switches so far.
    pub fn sched(&self) -> Result<Sched> {
        Sched::of(self.child.id())
    }
}

impl Drop for ForwardProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
