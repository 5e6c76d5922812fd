//! Node records and revocations: which certificates of an enrolled node
//! are still good, and which nodes an operator revoked. Kept in the
//! [`Records`] (`nodes/<tenant>/<node>`, `revocations`); [`super::State`]
//! keeps a copy in memory.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tunnelgate_proto::{NodeId, NodeKey, TenantId};

use super::records::Records;
use super::{unix_now, StateError};

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
    /// The id of the join token it enrolled with.
    #[serde(default)]
    pub enrolled_with: Option<String>,
    /// The labels its join token gave it, which stand in place of its
    /// agent's own; none for a token that carried none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
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

/// Why a node certificate is recorded.
#[derive(Debug, Clone)]
pub enum CertMode {
    /// A renewal over the node's session: the previous certificate stays
    /// good; refused for a revoked node.
    Renew,
    /// An enrolment with the join token `token_id`: a new record. Refused
    /// for a node that is enrolled and not revoked, unless `replace` (the
    /// token says so), or the same token enrolled it within
    /// [`ENROL_RETRY_WINDOW`] (an agent that lost the answer and asks again).
    Enrol {
        /// The join token's id.
        token_id: String,
        /// The token may replace an enrolled node.
        replace: bool,
        /// The labels the token gives its node.
        labels: BTreeMap<String, String>,
    },
}

/// How long after an enrolment the same token may enrol the same node
/// again, for an agent whose first answer was lost.
pub const ENROL_RETRY_WINDOW: u64 = 600;

fn record_key(key: &NodeKey) -> String {
    format!("nodes/{}/{}", key.tenant, key.node_id)
}

/// The key revocations are listed under.
pub(crate) const REVOCATIONS: &str = "revocations";

/// The record of `key`, if it enrolled.
pub(crate) async fn load(
    records: &Records,
    key: &NodeKey,
) -> Result<Option<NodeRecord>, StateError> {
    records.get(&record_key(key)).await
}

/// Adds certificate `serial` to `key`'s record; see
/// [`super::State::record_node_cert`].
pub(crate) async fn record_cert(
    records: &Records,
    key: &NodeKey,
    serial: String,
    mode: CertMode,
) -> Result<NodeRecord, StateError> {
    let node = key.clone();
    records
        .update(&record_key(key), move |current: Option<NodeRecord>| {
            let now = unix_now();
            let mut record = match (current, &mode) {
                (Some(r), CertMode::Renew) if r.revoked_at.is_some() => {
                    return Err(StateError::Revoked(node.clone()))
                }
                (Some(r), CertMode::Renew) => r,
                (
                    Some(r),
                    CertMode::Enrol {
                        token_id, replace, ..
                    },
                ) if r.revoked_at.is_none()
                    && !replace
                    && !(r.enrolled_with.as_ref() == Some(token_id)
                        && now.saturating_sub(r.enrolled_at) < ENROL_RETRY_WINDOW) =>
                {
                    return Err(StateError::AlreadyEnrolled(node.clone()))
                }
                (_, mode) => NodeRecord {
                    tenant: node.tenant.clone(),
                    node_id: node.node_id.clone(),
                    enrolled_at: now,
                    serials: Vec::new(),
                    revoked_at: None,
                    enrolled_with: match mode {
                        CertMode::Enrol { token_id, .. } => Some(token_id.clone()),
                        CertMode::Renew => None,
                    },
                    labels: match mode {
                        CertMode::Enrol { labels, .. } => labels.clone(),
                        CertMode::Renew => BTreeMap::new(),
                    },
                },
            };
            record.serials.push(serial.clone());
            let keep = record.serials.len().saturating_sub(2);
            record.serials.drain(..keep);
            Ok((Some(record.clone()), record))
        })
        .await
}

/// Revokes `key`: its certificates are refused from now on. The record
/// is marked first, so a relay that missed the revocation list still
/// refuses the node's next handshake.
pub(crate) async fn revoke(
    records: &Records,
    key: &NodeKey,
) -> Result<Option<NodeRecord>, StateError> {
    let now = unix_now();
    let revoked = records
        .update(&record_key(key), move |current: Option<NodeRecord>| {
            let Some(mut record) = current else {
                return Ok((None, None));
            };
            record.revoked_at.get_or_insert(now);
            let serials = std::mem::take(&mut record.serials);
            Ok((Some(record.clone()), Some((record, serials))))
        })
        .await?;
    let Some((record, serials)) = revoked else {
        return Ok(None);
    };
    let revocation = Revocation {
        tenant: key.tenant.clone(),
        node_id: key.node_id.clone(),
        serials,
        at: now,
    };
    records
        .update(REVOCATIONS, move |list: Option<Vec<Revocation>>| {
            let mut list = list.unwrap_or_default();
            list.push(revocation.clone());
            Ok((Some(list), ()))
        })
        .await?;
    Ok(Some(record))
}

/// Every revocation so far.
pub(crate) async fn revocations(records: &Records) -> Result<Vec<Revocation>, StateError> {
    Ok(records.get(REVOCATIONS).await?.unwrap_or_default())
}
