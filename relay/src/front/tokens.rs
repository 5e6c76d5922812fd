//! `POST /v1/tokens`: a join token for the caller's own tenant, with the
//! one-line install and the agent command that use it (what the
//! dashboard's "Add a node" shows). An admin or enroller of a tenant may
//! make one: it only lets a new host join that tenant, and never takes
//! over an enrolled node (this never sets `replace`).
//!
//! Query: `node=<id>` (the one node it may enrol), `ttl=<duration>`
//! (default 24h, at most 30d), `uses=<n>` (default 1).

use std::time::Duration;

use http::{HeaderMap, Response, StatusCode};
use serde_json::json;
use tunnelgate_proto::{NodeId, TenantId};

use super::context::Front;
use super::routes::query_pairs;
use crate::error::CallError;
use crate::respond::{json as json_response, Body};
use crate::state::credentials::NewCredential;
use crate::state::rfc3339;

const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);
const MAX_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// Makes a join token of `tenant` as `query` asks.
pub(super) async fn create(
    front: &Front,
    tenant: &TenantId,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<Response<Body>, CallError> {
    let (mut node, mut ttl, mut uses) = (None, DEFAULT_TTL, Some(1));
    for (key, value) in query_pairs(query) {
        match key {
            "node" => {
                node = Some(NodeId::new(value).map_err(|e| {
                    CallError::BadQuery(format!("node={value:?} is not a node id: {e}"))
                })?)
            }
            "ttl" => {
                ttl = humantime::parse_duration(value)
                    .ok()
                    .filter(|d| !d.is_zero() && *d <= MAX_TTL)
                    .ok_or_else(|| {
                        CallError::BadQuery(format!(
                            "ttl={value:?} is not a duration from 1s to 30d, e.g. ttl=24h"
                        ))
                    })?
            }
            "uses" => {
                uses = Some(value.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                    CallError::BadQuery(format!("uses={value:?} is not a count of 1 or more"))
                })?)
            }
            other => {
                return Err(CallError::BadQuery(format!(
                    "unknown parameter {other:?}; /v1/tokens takes node, ttl and uses"
                )))
            }
        }
    }
    let new = NewCredential {
        tenant: tenant.clone(),
        ttl: Some(ttl),
        uses,
        name: Some("dashboard".into()),
        node: node.clone(),
        replace: false,
        role: None,
    };
    let (text, stored) = front
        .state
        .create_join_token(new, front.install.ca_fingerprint())
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "cannot store a join token");
            CallError::Records(e.to_string())
        })?;
    let node_name = node.map_or_else(|| "NODE".to_owned(), |n| n.to_string());
    let body = json!({
        "id": stored.id,
        "tenant": stored.tenant,
        "expires_at": stored.expires_at.map(rfc3339),
        "uses": uses,
        "token": text,
        "install_command": front.install.install_command(headers, &text),
        "agent_command": front.install.agent_command(&node_name, &text),
    });
    Ok(json_response(StatusCode::CREATED, body.to_string()))
}
