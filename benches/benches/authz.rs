//! What deciding who may make a call costs per call, against a baseline
//! in the same run: authenticating the caller's API key among 10,000
//! (which every call does already, roles or not) and then the decision
//! (the Docker call's class and the role table). The decision is what
//! roles add. A scoped key's call also looks up the node's labels among
//! 1,000 nodes (in a concurrent map keyed as the relay's sessions are,
//! each behind a lock as a session's facts are) and matches its scope.
//!
//! Run: `cargo bench -p tunnelgate-benches --bench authz`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use http::header::{HeaderMap, AUTHORIZATION};
use http::Method;
use std::collections::BTreeMap;
use std::sync::Mutex;

use dashmap::DashMap;
use tunnelgate_proto::{NodeId, NodeKey, TenantId};
use tunnelgate_relay::auth::authenticate;
use tunnelgate_relay::authz::{decide, docker_call, Action, Role};
use tunnelgate_relay::config::ApiAuth;
use tunnelgate_relay::scope::Scope;
use tunnelgate_relay::state::credentials::{api_key_text, Credential};

const KEYS: usize = 10_000;
const NODES: usize = 1_000;

fn keys() -> (Vec<Credential>, String) {
    let secret = "0123456789abcdef0123456789abcdef";
    let hash = hex_sha256(secret);
    let keys = (0..KEYS)
        .map(|i| Credential {
            id: format!("{i:08x}"),
            tenant: TenantId::new(format!("t{}", i % 100)).expect("a tenant id"),
            name: None,
            secret_sha256: hash.clone(),
            created_at: 0,
            expires_at: None,
            max_uses: None,
            uses: 0,
            revoked_at: None,
            node: None,
            replace: false,
            recent: Vec::new(),
            role: Some(Role::ALL[i % 4]),
            last_used_at: None,
            scope: match i % 2 {
                0 => Scope::all(),
                _ => Scope::parse_all(&["env=staging", "region in (eu,us)"]).expect("a scope"),
            },
            labels: Default::default(),
        })
        .collect();
    // The last one: the longest search.
    (keys, api_key_text(&format!("{:08x}", KEYS - 1), secret))
}

fn hex_sha256(text: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

fn bench(c: &mut Criterion) {
    let (keys, text) = keys();
    let mut headers = HeaderMap::new();
    headers.insert(
        AUTHORIZATION,
        format!("Bearer {text}").parse().expect("a header value"),
    );
    let mut group = c.benchmark_group("authz");
    group.bench_function("baseline: authenticate among 10,000 keys", |b| {
        b.iter(|| {
            authenticate(ApiAuth::Required, black_box(&keys), &[], None, &headers).expect("the key")
        })
    });
    let principal = authenticate(ApiAuth::Required, &keys, &[], None, &headers).expect("the key");
    let paths = [
        (Method::GET, "/v1.41/containers/json"),
        (Method::POST, "/v1.41/containers/abc/exec"),
        (Method::GET, "/v1.41/containers/abc/archive"),
        (Method::POST, "/v1.41/containers/create"),
    ];
    group.bench_function("decide: classify the Docker call and read the table", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % paths.len();
            let (method, path) = &paths[i];
            let action = Action::Docker(docker_call(method, black_box(path)));
            black_box(decide(&principal, principal.role, action).is_ok())
        })
    });
    // A scoped key (odd ids are), and 1,000 nodes of its tenant, half of
    // them in its scope.
    let scoped = keys
        .iter()
        .rposition(|k| !k.scope.is_all())
        .expect("a scoped key");
    let scoped_text = api_key_text(&keys[scoped].id, "0123456789abcdef0123456789abcdef");
    let mut scoped_headers = HeaderMap::new();
    scoped_headers.insert(
        AUTHORIZATION,
        format!("Bearer {scoped_text}")
            .parse()
            .expect("a header value"),
    );
    let principal =
        authenticate(ApiAuth::Required, &keys, &[], None, &scoped_headers).expect("the key");
    let nodes: DashMap<NodeKey, Mutex<BTreeMap<String, String>>> = (0..NODES)
        .map(|i| {
            let key = NodeKey {
                tenant: principal.tenant.clone(),
                node_id: NodeId::new(format!("node-{i}")).expect("a node id"),
            };
            let env = if i % 2 == 0 { "staging" } else { "prod" };
            let labels = [("env", env), ("region", "eu"), ("rack", "r1")]
                .map(|(k, v)| (k.to_owned(), v.to_owned()));
            (key, Mutex::new(labels.into_iter().collect()))
        })
        .collect();
    let ids: Vec<NodeId> = (0..NODES)
        .map(|i| NodeId::new(format!("node-{i}")).expect("a node id"))
        .collect();
    group.bench_function(
        "decide and scope: the table, then one of 1,000 nodes' labels matched",
        |b| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % NODES;
                let (method, path) = &paths[i % paths.len()];
                let action = Action::Docker(docker_call(method, black_box(path)));
                let allowed = decide(&principal, principal.role, action).is_ok();
                let key = NodeKey {
                    tenant: principal.tenant.clone(),
                    node_id: ids[i].clone(),
                };
                let seen = nodes.get(&key).is_some_and(|labels| {
                    let labels = labels.lock().expect("not poisoned");
                    principal.scope.admits(key.node_id.as_str(), &labels)
                });
                black_box(allowed && seen)
            })
        },
    );
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
