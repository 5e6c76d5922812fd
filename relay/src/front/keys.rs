//! `/v1/keys`: an admin makes, lists and revokes the API keys of its own
//! tenant without a shell on the relay (`POST /v1/keys?role=viewer&
//! name=ci&ttl=30d&scope=env%3Dstaging`, `GET /v1/keys`,
//! `DELETE /v1/keys/<id>`); a scoped admin's new keys are held to its own
//! scope as well as theirs, so no key it makes sees more than it does; and
//! `GET /v1/whoami`, any caller's own tenant, principal and role (what
//! the dashboard shows and hides controls by). Who may call these is
//! decided before, by [`crate::authz`]; this module never decides it.

use std::time::Duration;

use http::{Response, StatusCode};
use serde_json::{json, Value};

use super::context::Front;
use crate::auth::Principal;
use crate::authz::Role;
use crate::error::CallError;
use crate::respond::{json as json_response, Body};
use crate::scope::Scope;
use crate::state::credentials::{api_key_text, Credential, Kind, NewCredential};
use crate::state::{rfc3339, unix_now};

/// The longest a key made through the API may live.
const MAX_TTL: Duration = Duration::from_secs(366 * 24 * 3600);

/// The caller, as it is known to the relay.
pub(super) fn whoami(principal: &Principal) -> Response<Body> {
    let body = json!({
        "tenant": principal.tenant,
        "principal": principal.to_string(),
        "role": principal.role,
        "scope": principal.scope,
    });
    json_response(StatusCode::OK, body.to_string())
}

fn shown(c: &Credential, now: u64) -> Value {
    json!({
        "id": c.id,
        "tenant": c.tenant,
        "name": c.name,
        "role": c.role(),
        "scope": c.scope,
        "state": c.state(now),
        "created_at": rfc3339(c.created_at),
        "expires_at": c.expires_at.map(rfc3339),
        "revoked_at": c.revoked_at.map(rfc3339),
        "last_used_at": c.last_used_at.map(rfc3339),
    })
}

/// The API keys of the caller's tenant, never their secrets.
pub(super) async fn list(
    front: &Front,
    principal: &Principal,
) -> Result<Response<Body>, CallError> {
    let now = unix_now();
    let keys: Vec<Value> = front
        .state
        .credentials()
        .list(Kind::ApiKey)
        .await
        .map_err(|e| CallError::Records(e.to_string()))?
        .iter()
        .filter(|c| c.tenant == principal.tenant)
        .map(|c| shown(c, now))
        .collect();
    Ok(json_response(
        StatusCode::OK,
        Value::Array(keys).to_string(),
    ))
}

/// Makes an API key of the caller's tenant as `query` asks: `role`
/// (required), `name`, `ttl`, `scope` (repeatable; all must hold).
pub(super) async fn create(
    front: &Front,
    principal: &Principal,
    query: Option<&str>,
) -> Result<Response<Body>, CallError> {
    let (mut role, mut name, mut ttl) = (None, None, None);
    let mut scopes = Vec::new();
    for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        let value = value.as_ref();
        match key.as_ref() {
            "scope" => scopes.push(value.to_owned()),
            "role" => {
                role = Some(
                    value
                        .parse::<Role>()
                        .map_err(|e| CallError::BadQuery(e.to_string()))?,
                )
            }
            "name" => name = Some(value.to_owned()),
            "ttl" => {
                ttl = Some(
                    humantime::parse_duration(value)
                        .ok()
                        .filter(|d| !d.is_zero() && *d <= MAX_TTL)
                        .ok_or_else(|| {
                            CallError::BadQuery(format!(
                                "ttl={value:?} is not a duration from 1s to 366d, e.g. ttl=30d"
                            ))
                        })?,
                )
            }
            other => {
                return Err(CallError::BadQuery(format!(
                    "unknown parameter {other:?}; /v1/keys takes role, name, ttl and scope"
                )))
            }
        }
    }
    let role = role.ok_or_else(|| {
        CallError::BadQuery(
            "say the new key's role: role=admin, operator, viewer or enroller".into(),
        )
    })?;
    let new = NewCredential {
        tenant: principal.tenant.clone(),
        ttl,
        uses: None,
        name,
        node: None,
        replace: false,
        role: Some(role),
        scope: principal
            .scope
            .and(&Scope::parse_all(&scopes).map_err(|e| CallError::BadQuery(e.to_string()))?),
        labels: Default::default(),
    };
    let (stored, secret) = front
        .state
        .credentials()
        .create(Kind::ApiKey, new)
        .await
        .map_err(|e| CallError::Records(e.to_string()))?;
    tracing::info!(key = %stored.id, %role, scope = %stored.scope, tenant = %stored.tenant, by = %principal,
                   "API key made through the API");
    let mut body = shown(&stored, unix_now());
    body["key"] = json!(api_key_text(&stored.id, &secret));
    Ok(json_response(StatusCode::CREATED, body.to_string()))
}

/// Revokes API key `id` of the caller's tenant; another tenant's is as
/// unknown as one that never was.
pub(super) async fn revoke(
    front: &Front,
    principal: &Principal,
    id: &str,
) -> Result<Response<Body>, CallError> {
    let revoked = front
        .state
        .credentials()
        .revoke_in(Kind::ApiKey, Some(&principal.tenant), id)
        .await
        .map_err(|e| CallError::Records(e.to_string()))?;
    match revoked {
        Some(c) => {
            tracing::info!(key = %c.id, tenant = %c.tenant, by = %principal,
                           "API key revoked through the API");
            Ok(json_response(
                StatusCode::OK,
                shown(&c, unix_now()).to_string(),
            ))
        }
        None => Err(CallError::NoSuchKey(id.to_owned())),
    }
}
