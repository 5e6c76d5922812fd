//! The etcd registry against a real etcd: two relays' registries claim
//! one node; the newer session's claim wins in etcd and in both mirrors,
//! whatever the order the claims arrive in, and a relay that is not a
//! member is never routed to.

// A panic is a test failure report, in helpers as in #[test] fns.
#![allow(clippy::unwrap_used)]
#![allow(clippy::disallowed_methods)]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use support::etcd::Etcd;
use tokio_util::sync::CancellationToken;
use tunnelgate_proto::{NodeKey, RelayId};
use tunnelgate_relay::registry::{Member, Registry};

fn member(id: &str) -> Member {
    Member {
        relay_id: RelayId::new(id).unwrap(),
        peer_addr: "127.0.0.1:1".into(),
        agent_addr: "127.0.0.1:2".into(),
        api_addr: "127.0.0.1:3".into(),
        generation: 1,
        draining: false,
    }
}

async fn wait(what: &str, ok: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ok() {
        assert!(Instant::now() < deadline, "{what} within 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_newer_claim_wins_everywhere_and_stale_ones_never_overwrite_it() {
    let etcd = Etcd::start().unwrap();
    let endpoints = vec![format!("http://{}", etcd.client)];
    let ttl = Duration::from_secs(2);
    let (stop_a, stop_b) = (CancellationToken::new(), CancellationToken::new());
    let a = Arc::new(
        Registry::etcd(endpoints.clone(), member("relay-a"), ttl)
            .await
            .unwrap(),
    );
    let b = Arc::new(
        Registry::etcd(endpoints, member("relay-b"), ttl)
            .await
            .unwrap(),
    );
    tokio::spawn(a.clone().run(stop_a.clone()));
    let b_run = tokio::spawn(b.clone().run(stop_b.clone()));
    wait("both relays see both members", || {
        a.members().len() == 2 && b.members().len() == 2
    })
    .await;

    let key = NodeKey::parse("acme/contested").unwrap();
    let holder = |r: &Registry| r.peer_holding(&key).map(|m| m.relay_id.to_string());
    a.publish(&key, 2_000);
    wait("b learns that a holds the node", || {
        holder(&b).as_deref() == Some("relay-a")
    })
    .await;
    // b's claim is older (a stale session): it must not win anywhere.
    b.publish(&key, 1_000);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        holder(&b).as_deref(),
        Some("relay-a"),
        "a stale claim won in b's mirror"
    );
    assert_eq!(
        holder(&a),
        None,
        "a's mirror says another relay holds its node"
    );
    let stored = etcd.get("/tunnelgate/v1/nodes/acme/contested").unwrap();
    assert!(
        stored.as_deref().is_some_and(|v| v.ends_with(" relay-a")),
        "the stale claim overwrote the newer one in etcd: {stored:?}"
    );

    // A newer session on b wins, and a withdrawing its old claim does
    // not remove b's.
    b.publish(&key, 3_000);
    wait("a learns that b holds the node now", || {
        holder(&a).as_deref() == Some("relay-b")
    })
    .await;
    a.withdraw(&key, 2_000);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        holder(&a).as_deref(),
        Some("relay-b"),
        "a's withdrawal removed b's claim"
    );

    // b leaves (revoking its lease): its entries go at once, well within
    // the lease's 2 s, and nothing routes to it.
    stop_b.cancel();
    b_run.await.unwrap();
    let left = Instant::now();
    wait("relay b's claim is gone from a's view", || {
        holder(&a).is_none() && a.members().len() == 1
    })
    .await;
    assert!(etcd.keys("/tunnelgate/v1/nodes/").unwrap().is_empty());
    println!("b's entries gone {:?} after it left", left.elapsed());
    stop_a.cancel();
}
