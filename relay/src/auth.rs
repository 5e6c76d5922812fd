//! Who is calling the control-plane API, and for which tenant.
//!
//! A call authenticates with an API key (`Authorization: Bearer tgkey1…`)
//! or with the client certificate of its TLS connection; a node
//! certificate never counts. Without either, a relay whose API is on
//! loopback and `loopback-open` acts for the `default` tenant; otherwise
//! the call is refused saying how to authenticate. Pure: the API keys come
//! in from the state cache, nothing here reads the disk.

use http::header::{self, HeaderMap};
use tunnelgate_proto::TenantId;
use tunnelgate_session::tls::{Role as CertRole, Subject};

use crate::authz::Role;
use crate::config::ApiAuth;
use crate::error::AuthFailure;
use crate::scope::Scope;
use crate::state::credentials::{self, Credential};

/// How a caller proved who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// A client certificate with this name (its CN) and serial.
    Cert {
        /// Its CN, as the audit line shows it.
        name: String,
        /// Its serial, as it is recorded and revoked.
        serial: String,
    },
    /// The API key with this id.
    ApiKey(String),
    /// Nothing: a loopback-open relay's local caller.
    Local,
    /// The relay itself, keeping its fleet view of a tenant's nodes.
    Relay,
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The tenant whose nodes it may see and reach.
    pub tenant: TenantId,
    /// How it authenticated.
    pub credentials: Credentials,
    /// What it may do ([`crate::authz`] decides by it).
    pub role: Role,
    /// Which of the tenant's nodes exist for it.
    pub scope: Scope,
    /// When its credential expires (unix seconds), if ever: a stream it
    /// opened ends then.
    pub expires_at: Option<u64>,
}

impl std::fmt::Display for Principal {
    /// As the audit line shows it: `cert:NAME`, `api-key:ID` or `local`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.credentials {
            Credentials::Cert { name, .. } => write!(f, "cert:{name}"),
            Credentials::ApiKey(id) => write!(f, "api-key:{id}"),
            Credentials::Local => f.write_str("local"),
            Credentials::Relay => f.write_str("relay:fleet-view"),
        }
    }
}

/// Authenticates one call from its headers and the subject of its
/// connection's client certificate, against the current `api_keys` and
/// recorded `client_certs`.
pub fn authenticate(
    mode: ApiAuth,
    api_keys: &[Credential],
    client_certs: &[Credential],
    client_cert: Option<&Subject>,
    headers: &HeaderMap,
) -> Result<Principal, AuthFailure> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let text = value.to_str().unwrap_or("");
        let key = text
            .strip_prefix("Bearer ")
            .or_else(|| text.strip_prefix("bearer "))
            .ok_or(AuthFailure::BadScheme)?;
        let c = credentials::check_api_key(api_keys, key).map_err(AuthFailure::BadApiKey)?;
        return Ok(Principal {
            role: c.role(),
            scope: c.scope,
            expires_at: c.expires_at,
            tenant: c.tenant,
            credentials: Credentials::ApiKey(c.id),
        });
    }
    if let Some(subject) = client_cert {
        return match (subject.role, &subject.tenant) {
            (Some(CertRole::Client), Some(tenant)) => {
                let (role, scope) = credentials::check_client_cert(client_certs, &subject.serial)
                    .map_err(AuthFailure::RevokedCert)?;
                Ok(Principal {
                    tenant: tenant.clone(),
                    credentials: Credentials::Cert {
                        name: subject.name.clone(),
                        serial: subject.serial.clone(),
                    },
                    expires_at: Some(subject.not_after.max(0) as u64),
                    role,
                    scope,
                })
            }
            _ => Err(AuthFailure::NotAClientCert),
        };
    }
    match mode {
        // The quickstart's caller on the relay's own host runs it all.
        ApiAuth::LoopbackOpen => Ok(Principal {
            tenant: TenantId::default_tenant(),
            credentials: Credentials::Local,
            role: Role::Admin,
            scope: Scope::all(),
            expires_at: None,
        }),
        ApiAuth::Required => Err(AuthFailure::Missing),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bearer(text: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, text.parse().unwrap());
        h
    }

    #[test]
    fn credentials_are_tried_in_order_and_refusals_name_their_cause() {
        let none = HeaderMap::new();
        let local = authenticate(ApiAuth::LoopbackOpen, &[], &[], None, &none).unwrap();
        assert_eq!(local.to_string(), "local");
        assert_eq!(local.tenant, TenantId::default_tenant());
        assert_eq!(
            authenticate(ApiAuth::Required, &[], &[], None, &none),
            Err(AuthFailure::Missing)
        );
        assert_eq!(
            authenticate(ApiAuth::LoopbackOpen, &[], &[], None, &bearer("Basic x")),
            Err(AuthFailure::BadScheme)
        );
        assert!(matches!(
            authenticate(
                ApiAuth::LoopbackOpen,
                &[],
                &[],
                None,
                &bearer("Bearer tgkey1.a.0123456789abcdef")
            ),
            Err(AuthFailure::BadApiKey(_))
        ));
    }
}
