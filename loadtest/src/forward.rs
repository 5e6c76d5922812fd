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

use anyhow::{Context, Result};
use tokio::net::{TcpListener, TcpStream};

use crate::helper_proc::HelperProc;
use crate::relay_proc::Sched;

/// Runs the forwarder in this process: accepts on `listen`, prints the
/// bound address on one line, and copies each connection both ways to
/// `to` until its client or `to` closes. One thread, as a minimal
/// forwarder would be. Exits when its standard input closes, so it never
/// outlives the run that started it.
pub fn serve(listen: SocketAddr, to: SocketAddr) -> Result<()> {
    crate::helper_proc::run(async move {
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
    proc: HelperProc,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl ForwardProc {
    /// Starts `tunnelgate-loadtest tcp-forward` (the binary beside this
    /// one) to `to` on a free loopback port.
    pub fn start(to: SocketAddr) -> Result<Self> {
        let args = [
            "tcp-forward",
            "--listen",
            "127.0.0.1:0",
            "--to",
            &to.to_string(),
        ]
        .map(String::from);
        let (proc, line) = HelperProc::start(&args, "TCP forwarder")?;
        let addr = line
            .parse()
            .with_context(|| format!("the forwarder said {line:?}, not its address"))?;
        Ok(Self { proc, addr })
    }

    /// Its exact CPU time and context switches so far.
    pub fn sched(&self) -> Result<Sched> {
        Sched::of(self.proc.pid())
    }
}
