//! The etcd registry against a real etcd: relays' registries claim one
//! node; every mirror lists its holders newest session first, a stale
//! claim under a relay's name never overwrites a newer one, and a relay
//! that left is never routed to.

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
async fn holders_are_listed_newest_first_and_stale_claims_never_overwrite() {
    let etcd = Etcd::start().unwrap();
    let endpoints = vec![format!("http://{}", etcd.client)];
    let ttl = Duration::from_secs(2);
    let start = |id: &str| {
        let endpoints = endpoints.clone();
        let id = id.to_owned();
        async move {
            let stop = CancellationToken::new();
            let r = Arc::new(Registry::etcd(endpoints, member(&id), ttl).await.unwrap());
            let run = tokio::spawn(r.clone().run(stop.clone()));
            (r, stop, run)
        }
    };
    let (a, stop_a, _) = start("relay-a").await;
    let (b, stop_b, b_run) = start("relay-b").await;
    let (o, stop_o, _) = start("relay-o").await;
    wait("every relay sees every member", || {
        [&a, &b, &o].iter().all(|r| r.members().len() == 3)
    })
    .await;

    let key = NodeKey::parse("acme/contested").unwrap();
    let holders = |r: &Registry| -> Vec<String> {
        r.peers_holding(&key)
            .iter()
            .map(|m| m.relay_id.to_string())
            .collect()
    };
    a.publish(&key, 2_000);
    wait("b learns that a holds the node", || {
        holders(&b) == ["relay-a"]
    })
    .await;
    // The agent's second session, on b, is older: listed after a's.
    b.publish(&key, 1_000);
    wait("the observer sees both holders", || {
        holders(&o) == ["relay-a", "relay-b"]
    })
    .await;
    assert_eq!(holders(&a), ["relay-b"], "a relay never lists itself");

    // A stale process under a's name (it lost its lease while its agent
    // came back to a's successor) claims an older session: refused in etcd.
    let (stale, stop_stale, _) = start("relay-a").await;
    stale.publish(&key, 1_500);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stored = etcd
        .get("/tunnelgate/v1/nodes/acme/contested/relay-a")
        .unwrap();
    assert_eq!(
        stored.as_deref(),
        Some("00000000000000002000"),
        "the stale claim overwrote the newer one in etcd"
    );
    // (It keeps running: leaving would revoke the member key it took over.)

    // A newer session on b moves it first; a withdrawing its claim
    // leaves b's alone.
    b.publish(&key, 3_000);
    wait("the observer puts b's newer session first", || {
        holders(&o) == ["relay-b", "relay-a"]
    })
    .await;
    a.withdraw(&key, 2_000);
    wait("a's claim is withdrawn", || holders(&o) == ["relay-b"]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(holders(&o), ["relay-b"], "a's withdrawal removed b's claim");

    // b leaves (revoking its lease): its entries go at once, well within
    // the lease's 2 s, and nothing routes to it.
    stop_b.cancel();
    b_run.await.unwrap();
    let left = Instant::now();
    wait("relay b's claim is gone from the observer's view", || {
        holders(&o).is_empty() && o.members().iter().all(|m| m.relay_id.as_str() != "relay-b")
    })
    .await;
    assert!(etcd.keys("/tunnelgate/v1/nodes/").unwrap().is_empty());
    println!("b's entries gone {:?} after it left", left.elapsed());
    for stop in [stop_a, stop_o, stop_stale] {
        stop.cancel();
    }
}
