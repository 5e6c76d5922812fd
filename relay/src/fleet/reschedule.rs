//! Rescheduling on node failure (Swarm's `reschedule:on-node-failure`):
//! a node offline for longer than the grace period has each of its
//! containers that asks for it created again and started on a node the
//! placement picks; when the old node is back, its stale copy is removed.
//! Driven by the tenant's watcher task once per look at the members;
//! every step says what it did in the log.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use serde_json::Value;
use tracing::{info, warn};
use tunnelgate_proto::{NodeId, TenantId};

use super::cache::TenantView;
use super::reach::{Member, NodeCalls};
use super::strategy::Strategy;
use super::view::{Health, Node};
use super::{place, Ask};

/// What rescheduling remembers between looks.
#[derive(Debug, Default)]
pub struct Rescheduler {
    /// Since when each offline node has been offline.
    offline_since: HashMap<NodeId, Instant>,
    /// Containers made again elsewhere, by (old node, old id): their
    /// stale copies to remove when the old node is back.
    moved: HashMap<(NodeId, String), NodeId>,
}

impl Rescheduler {
    /// One look: reschedules the containers of nodes offline longer than
    /// `grace`, removes stale copies from nodes that came back.
    pub async fn tick(
        &mut self,
        view: &TenantView,
        tenant: &TenantId,
        members: &[Member],
        calls: &dyn NodeCalls,
        strategy: &dyn Strategy,
        grace: Duration,
    ) {
        let now = Instant::now();
        for m in members {
            match m.online {
                false => {
                    self.offline_since.entry(m.id.clone()).or_insert(now);
                }
                true => {
                    self.offline_since.remove(&m.id);
                }
            }
        }
        let due: Vec<NodeId> = self
            .offline_since
            .iter()
            .filter(|(_, since)| now.duration_since(**since) >= grace)
            .map(|(id, _)| id.clone())
            .collect();
        for node in due {
            let Some(old) = view.node(&node) else {
                continue;
            };
            for c in old.containers() {
                let key = (node.clone(), c.id.clone());
                if self.moved.contains_key(&key) {
                    continue;
                }
                let Some(spec) = &c.respawn else {
                    continue;
                };
                if let Some(to) = respawn(view, tenant, calls, strategy, &node, &c.name, spec).await
                {
                    self.moved.insert(key, to);
                }
            }
        }
        self.remove_stale(view, tenant, calls).await;
    }

    /// Removes the old copies of moved containers from nodes that are
    /// back and listed.
    async fn remove_stale(&mut self, view: &TenantView, tenant: &TenantId, calls: &dyn NodeCalls) {
        let back: Vec<(NodeId, String)> = self
            .moved
            .keys()
            .filter(|(node, _)| {
                view.node(node).is_some_and(|n| {
                    n.health == Health::Healthy && !self.offline_since.contains_key(node)
                })
            })
            .cloned()
            .collect();
        for (node, id) in back {
            let path = format!("/containers/{id}?force=1");
            match calls.send(tenant, &node, Method::DELETE, &path, None).await {
                Ok((status, _)) if status.is_success() || status == StatusCode::NOT_FOUND => {
                    info!(%tenant, node_id = %node, container = %id,
                          "fleet: node back; removed the stale copy of a rescheduled container");
                    view.remove_container(&node, &id);
                    self.moved.remove(&(node, id));
                }
                Ok((status, answer)) => warn!(%tenant, node_id = %node, container = %id, %status,
                    answer = %answer, "fleet: the stale copy of a rescheduled container could not be removed; will try again"),
                Err(e) => warn!(%tenant, node_id = %node, container = %id, error = %e,
                    "fleet: the stale copy of a rescheduled container could not be removed; will try again"),
            }
        }
    }
}

/// Creates and starts container `name` of the failed node `from` again on
/// a node the placement picks; the node it went to.
async fn respawn(
    view: &TenantView,
    tenant: &TenantId,
    calls: &dyn NodeCalls,
    strategy: &dyn Strategy,
    from: &NodeId,
    name: &str,
    spec: &str,
) -> Option<NodeId> {
    let mut body: Value = serde_json::from_str(spec).ok()?;
    let ask = Ask::from_create(Some(name), &mut body).ok()?;
    let nodes = view.nodes();
    let fleet: Vec<&Node> = nodes.iter().map(|n| n.as_ref()).collect();
    let placed = match place(&fleet, &ask, strategy, rand::random()) {
        Ok(placed) => placed,
        Err(why) => {
            warn!(%tenant, node_id = %from, container = name,
                  "fleet: node offline past its grace, but its container cannot be rescheduled: {why}");
            return None;
        }
    };
    let to = placed.ranked.first()?.clone();
    let create = format!("/containers/create?name={name}");
    let made = calls
        .send(tenant, &to, Method::POST, &create, Some(body.to_string()))
        .await;
    let id = match made {
        Ok((StatusCode::CREATED, answer)) => answer["Id"].as_str().unwrap_or_default().to_owned(),
        Ok((status, answer)) => {
            warn!(%tenant, node_id = %to, container = name, %status, answer = %answer,
                  "fleet: rescheduling a container failed; will try again");
            return None;
        }
        Err(e) => {
            warn!(%tenant, node_id = %to, container = name, error = %e,
                  "fleet: rescheduling a container failed; will try again");
            return None;
        }
    };
    let started = calls
        .send(
            tenant,
            &to,
            Method::POST,
            &format!("/containers/{id}/start"),
            None,
        )
        .await;
    if let Err(e) = started {
        warn!(%tenant, node_id = %to, container = name, error = %e,
              "fleet: a rescheduled container was created but did not start");
    }
    super::reach::refresh_container(view, calls, tenant, &to, &id).await;
    info!(%tenant, from = %from, to = %to, container = name, id = %id,
          "fleet: node offline past its grace; container rescheduled");
    Some(to)
}
