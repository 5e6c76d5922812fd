//! The peer hop measured beside the local path, against real relay
//! processes. It has a binary of its own because it counts the UDP
//! datagrams the whole machine receives (`/proc/net/snmp`): cargo runs
//! test binaries one at a time, so no other test's QUIC packets land in
//! its count, as they did when it shared a binary with the scenarios.

// A panic is a test failure report, in helpers as in #[test] fns.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use tunnelgate_agent::config::TransportChoice;

mod support;
use support::setup;

const T: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peer_hop_is_measured_beside_the_local_path() {
    let r =
        tunnelgate_loadtest::cluster::peer_hop(&setup(TransportChoice::Quic), 4 << 20, 1, 50, T)
            .await
            .unwrap();
    for key in [
        "local_download_gbit_s",
        "peer_download_gbit_s",
        "peer_added_p50_us",
    ] {
        assert!(r[key].as_f64().is_some_and(|v| v > 0.0), "{key}: {r}");
    }
    assert!(
        r["relays_cpu_s_per_gb_peer"].as_f64().unwrap() > 0.0,
        "the hop's CPU is counted: {r}"
    );
    // Each path's small calls are costed apart: the holder and the other
    // relay on the hop, the forwarder only on its own path, and the hop's
    // own QUIC packets on top of the agent's.
    let cost = |path: &str, key: &str| r[path][key].as_f64().unwrap();
    assert!(
        r["forwarded_added_p50_us"]
            .as_f64()
            .is_some_and(|v| v > 0.0),
        "{r}"
    );
    assert!(cost("per_peer_call", "holder_cpu_us") > 0.0, "{r}");
    assert!(cost("per_peer_call", "other_relay_cpu_us") > 0.0, "{r}");
    assert!(cost("per_forwarded_call", "forwarder_cpu_us") > 0.0, "{r}");
    assert!(cost("per_local_call", "forwarder_cpu_us") < 1.0, "{r}");
    assert!(
        cost("per_peer_call", "udp_datagrams") > cost("per_local_call", "udp_datagrams") + 1.0,
        "{r}"
    );
}
