//! What deciding who may make a call costs per call, against a baseline
//! in the same run: authenticating the caller's API key among 10,000
//! (which every call does already, roles or not) and then the decision
//! (the Docker call's class and the role table). The decision is what
//! roles add.
//!
//! Run: `cargo bench -p tunnelgate-benches --bench authz`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use http::header::{HeaderMap, AUTHORIZATION};
use http::Method;
use tunnelgate_proto::TenantId;
use tunnelgate_relay::auth::authenticate;
use tunnelgate_relay::authz::{decide, docker_call, Action, Role};
use tunnelgate_relay::config::ApiAuth;
use tunnelgate_relay::state::credentials::{api_key_text, Credential};

const KEYS: usize = 10_000;

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
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
