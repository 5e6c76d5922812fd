//! Who is calling the control-plane API, and for which tenant.
//!
//! A call authenticates with an API key (`Authorization: Bearer tgkey1…`)
//! or with the client certificate of its TLS connection; a node
//! certificate never counts. Without either, a relay whose API is on
//! loopback and `loopback-open` acts for the `default` tenant; otherwise
//! the call gets a 401 that says how to authenticate.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use http::header::{self, HeaderMap};
use tunnelgate_proto::TenantId;
use tunnelgate_session::tls::{Role, Subject};

use crate::config::ApiAuth;
use crate::credentials::{self, Credential};
use crate::error::{ErrorSource, FrontError};
use crate::metrics::Metrics;

/// What the relay knows about one API connection.
#[derive(Debug)]
pub struct ConnInfo {
    /// The client's address.
    pub peer: SocketAddr,
    /// The subject of the client certificate it presented over TLS.
    pub client_cert: Option<Subject>,
    /// The node stream this connection's calls may go on again.
    pub node_stream: crate::front::KeptStream,
}

impl ConnInfo {
    /// A new connection from `peer`.
    pub fn new(peer: SocketAddr, client_cert: Option<Subject>) -> Self {
        Self {
            peer,
            client_cert,
            node_stream: Default::default(),
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The tenant whose nodes it may see and reach.
    pub tenant: TenantId,
    /// For the audit log: `cert:<name>`, `api-key:<id>` or `local`.
    pub name: String,
}

/// The API keys as last read from the state dir; the relay's watcher
/// replaces the list when the file changes.
#[derive(Debug, Default)]
pub struct ApiKeys(RwLock<Arc<Vec<Credential>>>);

impl ApiKeys {
    /// Replaces the cached list.
    pub fn set(&self, keys: Vec<Credential>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(keys);
    }

    fn get(&self) -> Arc<Vec<Credential>> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

const HOW: &str = "present a client certificate from `tunnelgate-relay client-cert create` \
                   (DOCKER_TLS_VERIFY=1 DOCKER_CERT_PATH=DIR) or an API key from \
                   `tunnelgate-relay api-key create` as `Authorization: Bearer <key>` \
                   (HttpHeaders in the docker CLI's config.json)";

fn refuse(metrics: &Metrics, reason: &str, message: String) -> FrontError {
    metrics.auth_failures.with_label_values(&[reason]).inc();
    FrontError::new(ErrorSource::Unauthenticated, message)
}

/// Authenticates one call.
pub fn authenticate(
    mode: ApiAuth,
    keys: &ApiKeys,
    conn: &ConnInfo,
    headers: &HeaderMap,
    metrics: &Metrics,
) -> Result<Principal, FrontError> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let text = value.to_str().unwrap_or("");
        let Some(key) = text
            .strip_prefix("Bearer ")
            .or_else(|| text.strip_prefix("bearer "))
        else {
            return Err(refuse(
                metrics,
                "bad_scheme",
                format!("the Authorization header must be `Bearer <API key>`; {HOW}"),
            ));
        };
        return match credentials::check_api_key(&keys.get(), key) {
            Ok(c) => Ok(Principal {
                tenant: c.tenant,
                name: format!("api-key:{}", c.id),
            }),
            Err(refusal) => Err(refuse(
                metrics,
                "bad_api_key",
                format!("authentication failed: {refusal}"),
            )),
        };
    }
    if let Some(subject) = &conn.client_cert {
        return match (subject.role, &subject.tenant) {
            (Some(Role::Client), Some(tenant)) => Ok(Principal {
                tenant: tenant.clone(),
                name: format!("cert:{}", subject.name),
            }),
            _ => Err(refuse(
                metrics,
                "not_a_client_cert",
                format!("the TLS client certificate is not a control-plane client certificate (node certificates cannot call the API); {HOW}"),
            )),
        };
    }
    match mode {
        ApiAuth::LoopbackOpen => Ok(Principal {
            tenant: TenantId::default_tenant(),
            name: "local".into(),
        }),
        ApiAuth::Required => Err(refuse(
            metrics,
            "missing",
            format!("authentication required: {HOW}"),
        )),
    }
}
