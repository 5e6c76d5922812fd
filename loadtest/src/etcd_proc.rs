//! A real etcd for the cluster scenarios: on loopback, with a throwaway
//! data dir and its own ports, killed when dropped. Debian's `etcd-server`
//! provides the binary.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use etcd_client::{Client, GetOptions};

/// A running etcd.
pub struct EtcdProc {
    child: Child,
    /// Its client address.
    pub client: SocketAddr,
    _dir: tempfile::TempDir,
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl EtcdProc {
    /// Starts etcd and waits until it answers.
    pub async fn start() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let (client, peer) = (free_port()?, free_port()?);
        let client_url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let child = Command::new("etcd")
            .arg("--name=loadtest")
            .arg(format!("--data-dir={}", dir.path().join("data").display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=loadtest={peer_url}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting etcd (Debian: apt-get install etcd-server)")?;
        let etcd = Self {
            child,
            client: format!("127.0.0.1:{client}").parse()?,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while etcd.connect().await.is_err() {
            if Instant::now() > deadline {
                bail!("etcd did not answer on {} within 30 s", etcd.client);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(etcd)
    }

    /// The relays' `--registry` value.
    pub fn registry(&self) -> String {
        format!("etcd://{}", self.client)
    }

    async fn connect(&self) -> Result<Client> {
        let mut client = Client::connect([format!("http://{}", self.client)], None).await?;
        client.status().await?;
        Ok(client)
    }

    /// How many relays hold a session of each node, from the registry.
    pub async fn holders_per_node(&self) -> Result<std::collections::HashMap<String, Vec<String>>> {
        let mut client = self.connect().await?;
        let resp = client
            .get(
                "/tunnelgate/v1/nodes/",
                Some(GetOptions::new().with_prefix().with_keys_only()),
            )
            .await?;
        let mut held = std::collections::HashMap::new();
        for kv in resp.kvs() {
            let key = kv.key_str()?;
            if let Some((node, relay)) = key.rsplit_once('/') {
                held.entry(node.to_owned())
                    .or_insert_with(Vec::new)
                    .push(relay.to_owned());
            }
        }
        Ok(held)
    }

    /// etcd's own counters of writes and of watch events sent, from its
    /// metrics: (puts + deletes + transactions, events).
    pub async fn counters(&self) -> Result<(f64, f64)> {
        let text = crate::client::fetch_text(self.client, "/metrics").await?;
        let sum = |names: &[&str]| -> f64 {
            text.lines()
                .filter(|l| !l.starts_with('#'))
                .filter(|l| names.iter().any(|n| l.split([' ', '{']).next() == Some(*n)))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        };
        Ok((
            sum(&[
                "etcd_mvcc_put_total",
                "etcd_mvcc_delete_total",
                "etcd_mvcc_txn_total",
            ]),
            sum(&["etcd_debugging_mvcc_events_total"]),
        ))
    }
}

impl Drop for EtcdProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
