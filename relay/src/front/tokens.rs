//! `POST /v1/tokens`: a join token for the caller's own tenant, with the
//! one-line install and the agent command that use it (what the
//! dashboard's "Add a node" shows). An admin or enroller of a tenant may
//! make one: it only lets a new host join that tenant, and never takes
//! over an enrolled node (this never sets `replace`).
//!
//! Query: `node=<id>` (the one node it may enrol), `ttl=<duration>`
//! (default 24h, at most 30d), `uses=<n>` (default 1), `label=KEY=VALUE`
//! (repeatable: the labels its node gets, in place of its agent's own).
//! A scoped caller's token must fix labels (or the node) that its scope
//! admits, so that it cannot enrol a node it would not see.

use std::collections::BTreeMap;
use std::time::Duration;

use http::{HeaderMap, Response, StatusCode};
use serde_json::json;
use tunnelgate_proto::NodeId;

use super::context::Front;
use crate::auth::Principal;
use crate::error::CallError;
use crate::respond::{json as json_response, Body};
use crate::state::credentials::NewCredential;
use crate::state::rfc3339;

const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);
const MAX_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// Makes a join token of `tenant` as `query` asks.
pub(super) async fn create(
    front: &Front,
    principal: &Principal,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<Response<Body>, CallError> {
    let tenant = &principal.tenant;
    let (mut node, mut ttl, mut uses) = (None, DEFAULT_TTL, Some(1));
    let mut labels = BTreeMap::new();
    for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        let value = value.as_ref();
        match key.as_ref() {
            "label" => {
                labels.extend(crate::scope::parse_labels(&[value]).map_err(CallError::BadQuery)?)
            }
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
                    "unknown parameter {other:?}; /v1/tokens takes node, ttl, uses and label"
                )))
            }
        }
    }
    let scope = &principal.scope;
    if !scope.admits_enrolment(node.as_ref().map(NodeId::as_str), &labels) {
        return Err(CallError::OutOfScope {
            who: principal.to_string(),
            scope: scope.clone(),
            what: "a join token it makes must give its node labels (label=KEY=VALUE) or a node id (node=ID) that its scope admits".into(),
        });
    }
    let new = NewCredential {
        tenant: tenant.clone(),
        ttl: Some(ttl),
        uses,
        name: Some("dashboard".into()),
        node: node.clone(),
        replace: false,
        role: None,
        scope: crate::scope::Scope::all(),
        labels: labels.clone(),
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
        "labels": labels,
        "token": text,
        "install_command": front.install.install_command(headers, &text),
        "agent_command": front.install.agent_command(&node_name, &text),
    });
    Ok(json_response(StatusCode::CREATED, body.to_string()))
}
