//! How the fleet reaches its nodes: the [`NodeCalls`] the front gives
//! (this module knows neither HTTP routing nor sessions), the tenant's
//! members as the relay's tables list them, and fetching one container or
//! one node's images again into the view.

use std::future::Future;
use std::pin::Pin;

use serde_json::Value;
use tunnelgate_proto::{NodeId, TenantId};

use super::cache::{self, TenantView};
use crate::respond::Body;

/// A boxed future, for the object-safe [`NodeCalls`].
pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A node of the tenant, as the relay's tables list it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The node.
    pub id: NodeId,
    /// Whether any relay holds a session of it.
    pub online: bool,
    /// The host's name, when known here.
    pub hostname: Option<String>,
    /// The agent's labels, when known here.
    pub labels: std::collections::BTreeMap<String, String>,
    /// `quic`, `tcp` or `peer`.
    pub transport: String,
    /// `direct`, `local` or `peer`.
    pub route: String,
    /// The relay holding its session.
    pub relay: String,
    /// Why its daemon is unreachable, if it is.
    pub daemon_error: Option<String>,
    /// Whether its agent's policy lets calls change it.
    pub writable: bool,
}

/// Why a call to a node failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failed {
    /// The node's status, when it answered.
    pub status: Option<http::StatusCode>,
    /// What happened.
    pub reason: String,
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

/// How the fleet reaches its nodes: given by the front.
pub trait NodeCalls: Send + Sync + 'static {
    /// The tenant's nodes, online or not, sorted by id.
    fn members(&self, tenant: &TenantId) -> Vec<Member>;

    /// The tenant's nodes a relay holds a session of now; cheaper than
    /// [`Self::members`], for what every fleet call checks.
    fn online(&self, tenant: &TenantId) -> std::collections::HashSet<NodeId> {
        self.members(tenant)
            .into_iter()
            .filter(|m| m.online)
            .map(|m| m.id)
            .collect()
    }

    /// A GET to a node, answered in full as JSON; `Err` says why not.
    fn get_json<'a>(
        &'a self,
        tenant: &'a TenantId,
        node: &'a NodeId,
        path: &'a str,
    ) -> BoxFut<'a, Result<Value, Failed>>;

    /// A call that changes a node, with a JSON body or none, answered in
    /// full: the node's status and its JSON answer (`null` if none).
    fn send<'a>(
        &'a self,
        tenant: &'a TenantId,
        node: &'a NodeId,
        method: http::Method,
        path: &'a str,
        body: Option<String>,
    ) -> BoxFut<'a, Result<(http::StatusCode, Value), Failed>>;

    /// A GET to a node whose answer streams (events). Its body may end
    /// early without an error: any end is a gap to list again after.
    fn stream<'a>(
        &'a self,
        tenant: &'a TenantId,
        node: &'a NodeId,
        path: &'a str,
    ) -> BoxFut<'a, Result<Body, Failed>>;
}

/// Fetches container `id` of `node` again into the view, or drops it
/// when the node no longer has it. The front calls it after each write
/// it carried, so the caller's next read sees the write.
pub async fn refresh_container(
    view: &TenantView,
    calls: &dyn NodeCalls,
    tenant: &TenantId,
    node: &NodeId,
    id: &str,
) {
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric()) {
        return;
    }
    let inspect = match calls
        .get_json(tenant, node, &format!("/containers/{id}/json"))
        .await
    {
        Ok(inspect) => inspect,
        Err(Failed {
            status: Some(http::StatusCode::NOT_FOUND),
            ..
        }) => return view.remove_container(node, id),
        // The next listing or event puts it right.
        Err(_) => return,
    };
    let filter = format!("/containers/json?all=1&filters=%7B%22id%22%3A%5B%22{id}%22%5D%7D");
    let listing = calls
        .get_json(tenant, node, &filter)
        .await
        .ok()
        .and_then(|l| l.as_array()?.first().cloned());
    let container = cache::container_from_inspect(&inspect, listing);
    if container.id.is_empty() {
        return;
    }
    view.put_container(node, container);
}

/// Fetches container `id` of `node`, just created, into the view once:
/// the relay that carried the create and the node's `create` event both
/// ask for it, and whichever comes first fetches while the other waits,
/// since any fetch begun after the create sees the container whole.
/// Later changes have events of their own.
pub async fn fetch_created(
    view: &TenantView,
    calls: &dyn NodeCalls,
    tenant: &TenantId,
    node: &NodeId,
    id: &str,
) {
    // Twice at most: when the other fetch failed, this one tries itself.
    for _ in 0..2 {
        if view.holds(node, id) {
            return;
        }
        match view.begin_fetch(node, id) {
            cache::Begun::Mine(_fetching) => {
                return refresh_container(view, calls, tenant, node, id).await
            }
            cache::Begun::Theirs(mut done) => {
                let _ = done.changed().await;
            }
        }
    }
}

/// Fetches node `node`'s image list again into the view.
pub async fn refresh_images(
    view: &TenantView,
    calls: &dyn NodeCalls,
    tenant: &TenantId,
    node: &NodeId,
) {
    if let Ok(list) = calls.get_json(tenant, node, "/images/json").await {
        let images = cache::images_from_list(&list);
        view.update(node, |n| n.images = images);
    }
}

#[cfg(test)]
pub(super) mod fake {
    //! Made-up nodes for the fleet's tests: they answer each GET with
    //! what a function of its path gives, refuse every write, have no
    //! event stream, and count what they were asked.

    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A node of the tenant, online or not, writable, with no facts.
    pub fn member(id: &str, online: bool) -> Member {
        Member {
            id: NodeId::new(id).expect("a valid test node id"),
            online,
            hostname: None,
            labels: Default::default(),
            transport: String::new(),
            route: String::new(),
            relay: String::new(),
            daemon_error: None,
            writable: true,
        }
    }

    /// Nodes whose GETs are answered by `answer`.
    pub struct FakeCalls {
        answer: fn(&str) -> Value,
        members: Vec<Member>,
        gets: AtomicUsize,
        sends: AtomicUsize,
        in_flight: AtomicUsize,
        most_in_flight: AtomicUsize,
    }

    impl FakeCalls {
        /// Nodes that answer each GET with `answer(path)`.
        pub fn answering(answer: fn(&str) -> Value) -> Self {
            Self {
                answer,
                members: Vec::new(),
                gets: AtomicUsize::new(0),
                sends: AtomicUsize::new(0),
                in_flight: AtomicUsize::new(0),
                most_in_flight: AtomicUsize::new(0),
            }
        }

        /// The same, for a tenant of `members`.
        pub fn with_members(mut self, members: Vec<Member>) -> Self {
            self.members = members;
            self
        }

        /// The most GETs that were ever unanswered at once.
        pub fn most_in_flight(&self) -> usize {
            self.most_in_flight.load(Ordering::Relaxed)
        }

        /// GETs asked so far.
        pub fn gets(&self) -> usize {
            self.gets.load(Ordering::Relaxed)
        }

        /// Writes refused so far.
        pub fn sends(&self) -> usize {
            self.sends.load(Ordering::Relaxed)
        }
    }

    impl NodeCalls for FakeCalls {
        fn members(&self, _: &TenantId) -> Vec<Member> {
            self.members.clone()
        }

        fn get_json<'a>(
            &'a self,
            _: &'a TenantId,
            _: &'a NodeId,
            path: &'a str,
        ) -> BoxFut<'a, Result<Value, Failed>> {
            self.gets.fetch_add(1, Ordering::Relaxed);
            let answer = (self.answer)(path);
            Box::pin(async move {
                let now = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
                self.most_in_flight.fetch_max(now, Ordering::Relaxed);
                // Lets another task's call begin meanwhile.
                tokio::task::yield_now().await;
                self.in_flight.fetch_sub(1, Ordering::Relaxed);
                Ok(answer)
            })
        }

        fn send<'a>(
            &'a self,
            _: &'a TenantId,
            _: &'a NodeId,
            _: http::Method,
            _: &'a str,
            _: Option<String>,
        ) -> BoxFut<'a, Result<(http::StatusCode, Value), Failed>> {
            self.sends.fetch_add(1, Ordering::Relaxed);
            Box::pin(async { Ok((http::StatusCode::INTERNAL_SERVER_ERROR, Value::Null)) })
        }

        fn stream<'a>(
            &'a self,
            _: &'a TenantId,
            _: &'a NodeId,
            _: &'a str,
        ) -> BoxFut<'a, Result<Body, Failed>> {
            Box::pin(async {
                Err(Failed {
                    status: None,
                    reason: "a made-up node has no event stream".into(),
                })
            })
        }
    }
}
