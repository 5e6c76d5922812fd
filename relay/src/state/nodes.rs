//! Node records and revocations in the state dir: which certificates of
//! an enrolled node are still good, and which nodes an operator revoked.
//!
//! Blocking file work; [`super::State`] keeps the records in memory and
//! calls these on the blocking pool.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tunnelgate_proto::{NodeId, NodeKey, TenantId};

use super::{io_err, read_json, unix_now, write_json, Locked, StateError};

/// What the relay keeps about an enrolled node.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeRecord {
    /// The owner.
    pub tenant: TenantId,
    /// The node.
    pub node_id: NodeId,
    /// Seconds since the epoch.
    pub enrolled_at: u64,
    /// Serials of the certificates that are good: the newest two.
    pub serials: Vec<String>,
    /// When an operator revoked it.
    #[serde(default)]
    pub revoked_at: Option<u64>,
}

impl NodeRecord {
    /// The node this record is of.
    pub fn key(&self) -> NodeKey {
        NodeKey {
            tenant: self.tenant.clone(),
            node_id: self.node_id.clone(),
        }
    }
}

/// One `node revoke`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Revocation {
    /// The owner.
    pub tenant: TenantId,
    /// The node.
    pub node_id: NodeId,
    /// The certificates that were good until then.
    pub serials: Vec<String>,
    /// Seconds since the epoch.
    pub at: u64,
}

impl Revocation {
    /// Whether this revocation covers the certificate `serial` of `key`.
    pub fn covers(&self, key: &NodeKey, serial: &str) -> bool {
        self.tenant == key.tenant
            && self.node_id == key.node_id
            && self.serials.iter().any(|s| s == serial)
    }
}

fn path(dir: &Path, key: &NodeKey) -> PathBuf {
    dir.join("nodes")
        .join(key.tenant.as_str())
        .join(format!("{}.json", key.node_id))
}

pub(crate) fn revoked_path(dir: &Path) -> PathBuf {
    dir.join("revoked.json")
}

/// The record of `key`, if it enrolled.
pub(crate) fn load(dir: &Path, key: &NodeKey) -> Result<Option<NodeRecord>, StateError> {
    read_json(&path(dir, key))
}

/// Every node record in the state dir.
pub(crate) fn load_all(dir: &Path) -> Result<Vec<NodeRecord>, StateError> {
    let nodes = dir.join("nodes");
    let mut records = Vec::new();
    for tenant in fs::read_dir(&nodes).map_err(io_err(&nodes))? {
        let tenant = tenant.map_err(io_err(&nodes))?.path();
        if !tenant.is_dir() {
            continue;
        }
        for file in fs::read_dir(&tenant).map_err(io_err(&tenant))? {
            let file = file.map_err(io_err(&tenant))?.path();
            if file.extension().is_some_and(|e| e == "json") {
                records.extend(read_json::<NodeRecord>(&file)?);
            }
        }
    }
    Ok(records)
}

fn save(dir: &Path, record: &NodeRecord) -> Result<(), StateError> {
    let path = path(dir, &record.key());
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    write_json(&path, record)
}

/// Adds certificate `serial` to `key`'s record under the lock; see
/// [`super::State::record_node_cert`].
pub(crate) fn record_cert(
    dir: &Path,
    key: &NodeKey,
    serial: String,
    renew: bool,
) -> Result<NodeRecord, StateError> {
    let _lock = Locked::take(dir)?;
    let mut record = match load(dir, key)? {
        Some(r) if renew => r,
        _ => NodeRecord {
            tenant: key.tenant.clone(),
            node_id: key.node_id.clone(),
            enrolled_at: unix_now(),
            serials: Vec::new(),
            revoked_at: None,
        },
    };
    if renew && record.revoked_at.is_some() {
        return Err(StateError::Revoked(key.clone()));
    }
    record.serials.push(serial);
    let keep = record.serials.len().saturating_sub(2);
    record.serials.drain(..keep);
    save(dir, &record)?;
    Ok(record)
}

/// Revokes `key`: its certificates are refused from now on.
pub(crate) fn revoke(dir: &Path, key: &NodeKey) -> Result<Option<NodeRecord>, StateError> {
    let _lock = Locked::take(dir)?;
    let Some(mut record) = load(dir, key)? else {
        return Ok(None);
    };
    let now = unix_now();
    record.revoked_at.get_or_insert(now);
    let serials = std::mem::take(&mut record.serials);
    save(dir, &record)?;
    let mut revoked = revocations(dir)?;
    revoked.push(Revocation {
        tenant: key.tenant.clone(),
        node_id: key.node_id.clone(),
        serials,
        at: now,
    });
    write_json(&revoked_path(dir), &revoked)?;
    Ok(Some(record))
}

/// Every revocation so far.
pub(crate) fn revocations(dir: &Path) -> Result<Vec<Revocation>, StateError> {
    Ok(read_json(&revoked_path(dir))?.unwrap_or_default())
}
