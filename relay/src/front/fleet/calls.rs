//! How the fleet's view reaches nodes: the relay's own calls, audited as
//! `relay:fleet-view` of the tenant, through the same path as a client's
//! ([`super::super::asks`]); and the tenant's members from the router's
//! and session table's facts. Also starts a tenant's view the first time
//! its fleet endpoint is called, and waits for its first listing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tunnelgate_proto::{NodeId, NodeKey, TenantId};

use super::super::asks::{self, Caller};
use super::super::context::Front;
use crate::fleet::cache::TenantView;
use crate::fleet::reach::{BoxFut, Failed, Member, NodeCalls};
use crate::fleet::watch;
use crate::respond::Body;
use crate::router::Held;
use crate::sessions::FleetFacts;

/// How long a first call to a tenant's fleet waits for every online node
/// to be listed once; a node slower than that is read as it comes.
const FIRST_LISTING: Duration = Duration::from_secs(5);

/// The front, as the fleet's way to its nodes.
#[derive(Debug, Clone)]
pub(in crate::front) struct FrontCalls(pub Arc<Front>);

impl NodeCalls for FrontCalls {
    fn members(&self, tenant: &TenantId) -> Vec<Member> {
        let front = &self.0;
        let local = front.sessions.fleet_facts(tenant);
        front
            .router
            .fleet(tenant)
            .into_iter()
            .map(|(id, held)| {
                let key = NodeKey {
                    tenant: tenant.clone(),
                    node_id: id.clone(),
                };
                let peer = match &held {
                    Held::Peer(_) => front.router.peer_view(&key).map(|v| FleetFacts::from(&v)),
                    _ => None,
                };
                // Both come sorted by node id: a search, not a scan per
                // node (which made this quadratic in the fleet).
                let facts = local
                    .binary_search_by(|f| f.node_id.cmp(&id))
                    .ok()
                    .map(|at| &local[at])
                    .or(peer.as_ref());
                let (route, relay) = match (&held, front.direct.usable(&key)) {
                    (Held::Nowhere, _) => ("", String::new()),
                    (_, Some(_)) => ("direct", front.state.relay_id().to_string()),
                    (Held::Here, None) => ("local", front.state.relay_id().to_string()),
                    (Held::Peer(r), None) => ("peer", r.to_string()),
                };
                let relay = match &held {
                    Held::Peer(r) => r.to_string(),
                    _ => relay,
                };
                Member {
                    online: held.is_online(),
                    hostname: facts.map(|f| f.hostname.clone()),
                    labels: facts.map(|f| f.labels.clone()).unwrap_or_default(),
                    transport: facts.map_or("peer", |f| &f.transport).to_owned(),
                    route: route.to_owned(),
                    relay,
                    daemon_error: facts.and_then(|f| f.daemon_error.clone()),
                    writable: facts.is_none_or(|f| f.writable),
                    id,
                }
            })
            .collect()
    }

    fn online(&self, tenant: &TenantId) -> std::collections::HashSet<NodeId> {
        self.0.router.online(tenant)
    }

    fn get_json<'a>(
        &'a self,
        tenant: &'a TenantId,
        node: &'a NodeId,
        path: &'a str,
    ) -> BoxFut<'a, Result<serde_json::Value, Failed>> {
        Box::pin(async move {
            let caller = Caller::relay(tenant);
            asks::ask_json(&self.0, &caller, node, path)
                .await
                .map_err(|e| Failed {
                    status: e.node_status(),
                    reason: e.to_string(),
                })
        })
    }

    fn send<'a>(
        &'a self,
        tenant: &'a TenantId,
        node: &'a NodeId,
        method: http::Method,
        path: &'a str,
        body: Option<String>,
    ) -> BoxFut<'a, Result<(http::StatusCode, serde_json::Value), Failed>> {
        Box::pin(async move {
            let caller = Caller::relay(tenant);
            let failed = |e: crate::error::CallError| Failed {
                status: Some(e.status()),
                reason: e.to_string(),
            };
            let mut headers = http::HeaderMap::new();
            headers.insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            let body = bytes::Bytes::from(body.unwrap_or_default());
            let resp = asks::send(&self.0, &caller, node, method, path, &headers, body)
                .await
                .map_err(failed)?;
            let status = resp.status();
            let bytes = http_body_util::BodyExt::collect(resp.into_body())
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let value = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
            Ok((status, value))
        })
    }

    fn stream<'a>(
        &'a self,
        tenant: &'a TenantId,
        node: &'a NodeId,
        path: &'a str,
    ) -> BoxFut<'a, Result<Body, Failed>> {
        Box::pin(async move {
            let caller = Caller::relay(tenant);
            let resp = asks::watch(&self.0, &caller, node, path)
                .await
                .map_err(|e| Failed {
                    status: Some(e.status()),
                    reason: e.to_string(),
                })?;
            match resp.status().is_success() {
                true => Ok(resp.into_body()),
                false => Err(Failed {
                    status: Some(resp.status()),
                    reason: format!("{}", resp.status()),
                }),
            }
        })
    }
}

/// The tenant's fleet view, started on its first call, and once every
/// online node has been listed (or [`FIRST_LISTING`] has passed); later
/// calls do not wait again, and read a node not listed yet as skipped.
pub(in crate::front) async fn view(front: &Arc<Front>, tenant: &TenantId) -> Arc<TenantView> {
    let (view, new) = front.fleet.tenant(tenant);
    let calls = FrontCalls(front.clone());
    if new {
        watch::spawn_tenant(
            view.clone(),
            tenant.clone(),
            Arc::new(calls.clone()),
            watch::Settings {
                strategy: front.config.fleet_strategy,
                reschedule_grace: front.config.fleet_reschedule_grace,
            },
            front.tasks.clone(),
            front.wind_down.clone(),
        );
    }
    if view.was_listed() {
        // Which nodes went or came since the tenant's task last looked;
        // a daemon's state, which changes less, it brings itself. Only
        // when a session came or went since the last call looked: over
        // 10,000 nodes the look is a walk over all of them. The
        // generation is read before the online set, so a change while
        // this call looks shows to the next.
        if view.see_online(front.router.online_generation()) {
            watch::apply_online(&view, &calls.online(tenant));
        }
        return view;
    }
    let deadline = Instant::now() + FIRST_LISTING;
    loop {
        let members = calls.members(tenant);
        if watch::is_listed(&view, &members) || Instant::now() >= deadline {
            view.set_listed();
            // A node that came or went since the view's last look reads as
            // the relay's tables say now, as in /v1/nodes.
            watch::apply_health(&view, &members);
            return view;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
