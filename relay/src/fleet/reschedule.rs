//! Rescheduling on node failure (Swarm's `reschedule:on-node-failure`):
//! a node offline for longer than the grace period has each of its
//! containers that asks for it created again and started on a node the
//! placement picks; when the old node is back, its stale copy is removed.
//! Driven by the tenant's watcher task once per look at the members;
//! every step says what it did in the log and as a fleet event
//! (`reschedule`, `reschedule_failed`, `reschedule_cleanup`), which
//! `docker events` on the fleet shows.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use serde_json::Value;
use tracing::{info, warn};
use tunnelgate_proto::{NodeId, TenantId};

use super::cache::TenantView;
use super::news::container_event;
use super::reach::{Member, NodeCalls};
use super::strategy::Strategy;
use super::view::{Health, Node};
use super::{place, Ask};

/// What rescheduling remembers between looks.
#[derive(Debug, Default)]
pub struct Rescheduler {
    /// Since when each offline node has been offline.
    offline_since: HashMap<NodeId, Instant>,
    /// Containers made again elsewhere, by (old node, old id): where they
    /// went and their name, with the stale copies to remove when the old
    /// node is back.
    moved: HashMap<(NodeId, String), (NodeId, String)>,
    /// When a container that could not be made again elsewhere may be
    /// tried next, so a fleet with no room says so every
    /// [`RETRY_AFTER`], not at every look.
    next_try: HashMap<(NodeId, String), Instant>,
}

/// How long a container that could not be rescheduled waits for the next try.
const RETRY_AFTER: Duration = Duration::from_secs(10);

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
                    self.next_try.retain(|(node, _), _| *node != m.id);
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
                let waiting = self.next_try.get(&key).is_some_and(|at| now < *at);
                if self.moved.contains_key(&key) || waiting {
                    continue;
                }
                let Some(spec) = &c.respawn else {
                    continue;
                };
                match respawn(view, tenant, calls, strategy, &node, &c.name, spec).await {
                    Ok((to, id)) => {
                        view.news.say(container_event(
                            "reschedule",
                            &id,
                            &to,
                            &[
                                ("name", &c.name),
                                ("from_node", node.as_str()),
                                ("from_id", &c.id),
                            ],
                            &[&node],
                        ));
                        self.next_try.remove(&key);
                        self.moved.insert(key, (to, c.name.clone()));
                    }
                    Err(why) => {
                        let why = format!("{why}; trying again in {} s", RETRY_AFTER.as_secs());
                        view.news.say(container_event(
                            "reschedule_failed",
                            &c.id,
                            &node,
                            &[("name", &c.name), ("error", &why)],
                            &[],
                        ));
                        self.next_try.insert(key, now + RETRY_AFTER);
                    }
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
            let Some((to, name)) = self.moved.get(&(node.clone(), id.clone())).cloned() else {
                continue;
            };
            let path = format!("/containers/{id}?force=1");
            match calls.send(tenant, &node, Method::DELETE, &path, None).await {
                Ok((status, _)) if status.is_success() || status == StatusCode::NOT_FOUND => {
                    info!(%tenant, node_id = %node, container = %id,
                          "fleet: node back; removed the stale copy of a rescheduled container");
                    view.news.say(container_event(
                        "reschedule_cleanup",
                        &id,
                        &node,
                        &[("name", &name), ("moved_to", to.as_str())],
                        &[&to],
                    ));
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
/// a node the placement picks: the node it went to and its new id, or why
/// not (said in the log too).
async fn respawn(
    view: &TenantView,
    tenant: &TenantId,
    calls: &dyn NodeCalls,
    strategy: &dyn Strategy,
    from: &NodeId,
    name: &str,
    spec: &str,
) -> Result<(NodeId, String), String> {
    let mut body: Value =
        serde_json::from_str(spec).map_err(|e| format!("its create request is unreadable: {e}"))?;
    let ask = Ask::from_create(Some(name), &mut body)
        .map_err(|e| format!("its create request is refused: {e}"))?;
    let nodes = view.nodes();
    let fleet: Vec<&Node> = nodes.iter().map(|n| n.as_ref()).collect();
    let placed = match place(&fleet, &ask, strategy, rand::random()) {
        Ok(placed) => placed,
        Err(why) => {
            warn!(%tenant, node_id = %from, container = name,
                  "fleet: node offline past its grace, but its container cannot be rescheduled (trying again in {} s): {why}", RETRY_AFTER.as_secs());
            return Err(format!("no node can take it: {why}"));
        }
    };
    let to = placed
        .ranked
        .first()
        .ok_or("the placement ranked no node")?
        .clone();
    let create = format!("/containers/create?name={name}");
    let made = calls
        .send(tenant, &to, Method::POST, &create, Some(body.to_string()))
        .await;
    let id = match made {
        Ok((StatusCode::CREATED, answer)) => answer["Id"].as_str().unwrap_or_default().to_owned(),
        Ok((status, answer)) => {
            warn!(%tenant, node_id = %to, container = name, %status, answer = %answer,
                  "fleet: rescheduling a container failed; trying again in {} s", RETRY_AFTER.as_secs());
            return Err(format!("node {to} refused the create ({status}): {answer}"));
        }
        Err(e) => {
            warn!(%tenant, node_id = %to, container = name, error = %e,
                  "fleet: rescheduling a container failed; trying again in {} s", RETRY_AFTER.as_secs());
            return Err(format!("the create on node {to} failed: {e}"));
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
    Ok((to, id))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::fleet::reach::fake::{member, FakeCalls};
    use crate::fleet::view::Container;
    use crate::fleet::StrategyName;

    #[tokio::test]
    async fn a_container_that_cannot_be_made_again_waits_before_the_next_try() {
        let view = TenantView::default();
        let mut old = Node::new(NodeId::new("old").unwrap());
        old.health = Health::Offline;
        old.put_container(Container {
            id: "c1".into(),
            name: "phoenix".into(),
            respawn: Some(Arc::from(r#"{"Image":"busybox"}"#)),
            ..Default::default()
        });
        view.put(old);
        view.put(Node::new(NodeId::new("new").unwrap()));
        let members = [member("old", false), member("new", true)];
        // Nodes that refuse every create.
        let calls = FakeCalls::answering(|_| Value::Null);
        let tenant = TenantId::new("t").unwrap();
        let mut r = Rescheduler::default();
        let spread = StrategyName::Spread.strategy();
        for _ in 0..3 {
            r.tick(&view, &tenant, &members, &calls, spread, Duration::ZERO)
                .await;
        }
        assert_eq!(calls.sends(), 1, "one try, then a wait");
        assert!(r.moved.is_empty());
        let (said, _) = view.news.follow(Some(0));
        assert_eq!(said.len(), 1, "the failure is said once per try");
        assert_eq!(said[0].event["Action"], "reschedule_failed");
        let error = said[0].event["Actor"]["Attributes"]["error"]
            .as_str()
            .unwrap();
        assert!(error.contains("refused the create"), "{error}");
    }
}
