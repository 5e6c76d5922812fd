//! Every scenario at a tiny scale against a real relay process: it runs,
//! stops by itself, and reports numbers that make sense.

// A panic is a test failure report, in helpers as in #[test] fns.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use tunnelgate_agent::config::TransportChoice;
use tunnelgate_loadtest::scenarios::{self, Setup};

mod support;
use support::setup;

/// A plain TCP forwarder standing in for another tunnel: every
/// connection to the returned address is piped to `target`.
async fn forwarder(target: std::net::SocketAddr) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut out = tokio::net::TcpStream::connect(target).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
            });
        }
    });
    addr
}

const T: Duration = Duration::from_secs(60);

/// A TLS/TCP setup whose synthetic daemon is also reached through a plain
/// forwarder in this process, named as a peer tunnel whose server is this
/// process. The responder listens before the forwarder points at it.
async fn with_forwarder() -> (Setup, scenarios::Peer) {
    let responder = tunnelgate_loadtest::synthetic_docker::spawn(0)
        .await
        .unwrap();
    let peer = scenarios::Peer {
        name: "forwarder".into(),
        addr: forwarder(responder).await,
        pid: Some(std::process::id()),
        client_pid: None,
    };
    let setup = Setup {
        responder: Some(responder),
        ..setup(TransportChoice::Tcp)
    };
    (setup, peer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_storm_and_idle_hold_report_every_agent() {
    let r = scenarios::connect_storm(&setup(TransportChoice::Quic), 30, T)
        .await
        .unwrap();
    assert_eq!(r["connected"], 30, "{r}");
    assert_eq!(r["failures"], 0);
    assert!(r["handshakes_per_s"].as_f64().unwrap() > 0.0);
    // Both waves: first contact (enrolling) and every agent again with
    // its certificate, each with what it cost the relay.
    assert_eq!(r["first_contact"]["connected"], 30, "{r}");
    assert_eq!(r["reconnect"]["connected"], 30, "{r}");
    assert!(
        r["first_contact"]["relay_cpu_ms_per_agent"]
            .as_f64()
            .unwrap()
            > 0.0,
        "30 enrolments cost the relay no CPU? {r}"
    );

    let r = scenarios::idle_hold(&setup(TransportChoice::Tcp), 20, Duration::from_secs(1), T)
        .await
        .unwrap();
    assert_eq!(r["connected_at_end"], 20, "{r}");
    // Holding sessions costs memory, and not much of it per agent.
    let (empty, held) = (
        r["relay_rss_empty_bytes"].as_u64().unwrap(),
        r["relay_rss_held_bytes"].as_u64().unwrap(),
    );
    assert!(held > empty, "20 sessions cost no memory? {r}");
    let per_agent = r["relay_rss_per_agent_bytes"].as_f64().unwrap();
    assert!(
        per_agent < 1024.0 * 1024.0,
        "over 1 MiB per idle agent: {r}"
    );
    // Every download of the burst came back whole, and carrying 256 at
    // once cost the relay memory (a relay that did not stream would not).
    assert_eq!(r["burst"]["ok"], 256, "{r}");
    assert_eq!(r["burst"]["failed"], 0, "{r}");
    let after = &r["after_burst"];
    let peak = r["burst"]["relay_rss_peak_bytes"].as_u64().unwrap();
    assert!(
        peak > held,
        "256 concurrent streams cost the relay no memory? {r}"
    );
    // "Returned" is claimed only when the last sample shows it.
    if !after["within_20_percent_from_s"].is_null() {
        assert!(after["relay_rss_over_idle"].as_f64().unwrap() <= 1.2, "{r}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_storm_brings_every_agent_back_while_calls_are_served() {
    let r = scenarios::restart_storm(&setup(TransportChoice::Quic), 30, 2, false, T)
        .await
        .unwrap();
    assert_eq!(r["back_at_end"], 30, "{r}");
    assert!(r["time_to_all_back_s"].as_f64().is_some(), "{r}");
    assert!(r["relay_away_s"].as_f64().unwrap() > 0.0);
    assert!(r["calls_ok_during_storm"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["calls_failed_otherwise"], 0, "{r}");
    assert_eq!(r["first_failures"], serde_json::json!([]), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_storm_brings_every_agent_back_without_a_drain() {
    let r = scenarios::restart_storm(&setup(TransportChoice::Quic), 30, 2, true, T)
        .await
        .unwrap();
    assert_eq!(r["stopped_by"], "SIGKILL", "{r}");
    assert_eq!(r["back_at_end"], 30, "{r}");
    assert!(r["time_to_all_back_s"].as_f64().is_some(), "{r}");
    assert_eq!(r["calls_failed_otherwise"], 0, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_rate_counts_calls_and_latencies() {
    let r = scenarios::request_rate(&setup(TransportChoice::Quic), 4, 3, 300, T, T)
        .await
        .unwrap();
    assert_eq!(r["ok"], 300, "{r}");
    assert_eq!(r["failed"], 0);
    let lat = &r["latency"];
    let (p50, p99) = (
        lat["p50_us"].as_f64().unwrap(),
        lat["p99_us"].as_f64().unwrap(),
    );
    assert!(p50 > 0.0 && p99 >= p50, "{lat}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_reports_both_paths_and_the_difference() {
    let (setup, peer) = with_forwarder().await;
    let r = scenarios::latency(&setup, 50, &[peer], T).await.unwrap();
    // CPU per call is counted for the processes named, and only those.
    let peer = &r["peers"]["forwarder"];
    assert!(peer["kept_alive_added_p50_us"].is_f64(), "{r}");
    assert!(peer["server_cpu_us_per_kept_alive_call"].is_f64(), "{r}");
    assert!(peer["client_cpu_us_per_kept_alive_call"].is_null(), "{r}");
    assert!(r["agent_cpu_us_per_kept_alive_call"].is_f64(), "{r}");
    assert!(peer["server_switches_per_kept_alive_call"].is_f64(), "{r}");
    // Counted per thread in nanoseconds, so 50 calls through the relay
    // cannot read as none (10 ms ticks could).
    assert!(
        r["relay_cpu_us_per_kept_alive_call"].as_f64().unwrap() > 0.0,
        "{r}"
    );
    assert!(
        r["relay_switches_per_kept_alive_call"].as_f64().unwrap() > 0.0,
        "{r}"
    );
    for path in ["kept_alive", "new_connection"] {
        for side in ["direct", "relayed"] {
            let p = &r[path][side];
            assert!(p["p50_us"].as_f64().unwrap() > 0.0, "{r}");
            assert!(p["p99_us"].as_f64().unwrap() >= p["p50_us"].as_f64().unwrap());
        }
        let added = r[path]["added_p50_us"].as_f64().unwrap();
        let (relayed, direct) = (
            r[path]["relayed"]["p50_us"].as_f64().unwrap(),
            r[path]["direct"]["p50_us"].as_f64().unwrap(),
        );
        assert!((added - (relayed - direct)).abs() < 1e-6, "{r}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_moves_every_byte_both_ways() {
    // The scenario itself checks every transfer's byte count.
    let (setup, peer) = with_forwarder().await;
    let r = scenarios::bulk(&setup, 8 << 20, 2, &[peer], T)
        .await
        .unwrap();
    assert!(r["relayed_download_gbit_s"].as_f64().unwrap() > 0.0, "{r}");
    assert!(r["relayed_upload_gbit_s"].as_f64().unwrap() > 0.0);
    assert!(r["download_ratio_to_direct"].as_f64().unwrap() > 0.0);
    // The peer's transfer went through it, was timed and its CPU counted.
    let peer = &r["peers"]["forwarder"];
    assert!(peer["download_gbit_s"].as_f64().unwrap() > 0.0, "{r}");
    // This process forwarded the bytes, so its CPU time over the
    // transfer cannot be nil.
    assert!(peer["server_cpu_s_per_gb"].as_f64().unwrap() > 0.0, "{r}");
    assert!(
        r["relayed_download_ratio_to_peer"]["forwarder"]
            .as_f64()
            .unwrap()
            > 0.0
    );
}

#[test]
fn peers_are_parsed_from_name_address_and_pid() {
    let p: scenarios::Peer = "rathole-tls=127.0.0.1:5202,42".parse().unwrap();
    assert_eq!(
        (p.name.as_str(), p.addr.port(), p.pid),
        ("rathole-tls", 5202, Some(42))
    );
    assert_eq!(p.client_pid, None);
    let p: scenarios::Peer = "rathole-tls=127.0.0.1:5202,42,43".parse().unwrap();
    assert_eq!((p.pid, p.client_pid), (Some(42), Some(43)));
    let p: scenarios::Peer = "bore=127.0.0.1:7000".parse().unwrap();
    assert_eq!(p.pid, None);
    assert!("x=127.0.0.1:1,42,four".parse::<scenarios::Peer>().is_err());
    let err = "nonsense".parse::<scenarios::Peer>().unwrap_err();
    assert!(err.contains("NAME=ADDR"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_never_fails_calls_to_steady_nodes() {
    let r = scenarios::churn(
        &setup(TransportChoice::Quic),
        8,
        3,
        2,
        Duration::from_secs(3),
        T,
    )
    .await
    .unwrap();
    assert!(r["reconnects"].as_u64().unwrap() >= 3, "{r}");
    assert!(r["calls_to_steady_nodes_ok"].as_u64().unwrap() > 0);
    assert_eq!(r["calls_to_steady_nodes_failed"], 0);
    assert_eq!(r["all_back_at_end"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_call_is_reported_with_the_relays_message() {
    let relay = tunnelgate_loadtest::relay_proc::RelayProc::start(
        &setup(TransportChoice::Quic).relay_bin,
        &[],
    )
    .unwrap();
    let mut client = tunnelgate_loadtest::client::Client::new(relay.api);
    let err = client.get("/nodes/no-such-node/_ping").await.unwrap_err();
    let err = format!("{err:#}");
    // The path, the status, then what the relay said about that node.
    let (_, said) = err.split_once("HTTP ").unwrap();
    assert!(said.contains("no-such-node"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_spreads_a_fleet_and_gets_it_back_after_a_relay_dies() {
    let r = tunnelgate_loadtest::cluster::cluster(&setup(TransportChoice::Quic), 3, 60, 2, T)
        .await
        .unwrap();
    assert_eq!(r["sessions_per_relay"].as_array().unwrap().len(), 3, "{r}");
    let sessions: u64 = r["sessions_per_relay"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(sessions, 120, "two sessions per agent: {r}");
    assert!(r["all_back_to_two_sessions_s"].as_f64().is_some(), "{r}");
    assert_eq!(r["most_sessions_any_node_holds_at_end"], 2, "{r}");
    assert!(r["killed_relay_sessions"].as_u64().unwrap() > 0, "{r}");
    assert!(
        r["etcd_writes_per_agent_connect"].as_f64().unwrap() >= 2.0,
        "{r}"
    );
    assert!(r["calls_ok"].as_u64().unwrap() > 0, "{r}");
}

#[tokio::test]
async fn simulated_agents_see_the_synthetic_responder_as_a_reachable_daemon() {
    // An agent that reads its daemon as unreachable logs a warning on
    // every session start: ten thousand of them skew what a run measures.
    let addr = tunnelgate_loadtest::synthetic_docker::spawn(0)
        .await
        .unwrap();
    let endpoint: tunnelgate_agent::docker::DockerEndpoint =
        format!("tcp://{addr}").parse().unwrap();
    let facts = endpoint.probe().await;
    assert!(facts.reachable, "{:?}", facts.error);
    assert_eq!(facts.id.as_deref(), Some("synthetic-docker-responder"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_endpoint_answers_from_its_view_and_places_creates() {
    let (nodes, containers) = (24, 3);
    // Fewer calls in flight allowed per tenant than the fleet has nodes:
    // the view's own event streams (one per node) must not count, or the
    // view never fills and clients are refused.
    let mut setup = setup(TransportChoice::Quic);
    setup.relay_args = vec!["--max-streams-per-tenant=16".into()];
    let r = tunnelgate_loadtest::fleet_endpoint::fleet(&setup, nodes, containers, 20, 3, 10, T)
        .await
        .unwrap();
    // One listing per node filled the view (facts, containers, images and
    // one inspect per container) and one event stream; then reads asked
    // no node at all.
    let view = &r["view"];
    assert_eq!(view["node_calls_to_fill"], nodes * (4 + containers), "{r}");
    // The settled reading comes at least 2 s after the first, and within
    // the bound.
    let settled_after = view["rss_settled_s_after_fill"].as_f64().unwrap();
    assert!((4.0..25.0).contains(&settled_after), "{r}");
    assert!(view["relay_rss_settled_bytes"].as_u64().unwrap() > 0, "{r}");
    let ps = &r["ps_filter_label"];
    assert_eq!(ps["containers_per_answer"], containers, "{r}");
    assert_eq!(ps["node_calls_during_reads"], 0, "{r}");
    assert!(ps["relay_cpu_us_per_read"].as_f64().unwrap() > 0.0, "{r}");
    // A create placed through /fleet asks the node no more than the same
    // create sent to the node: the create, then one fetch of the new
    // container, whether the relay's answer or the node's event asks first.
    for round in r["create"]["rounds"].as_array().unwrap() {
        for kind in ["nodes", "fleet", "fleet_filtered"] {
            assert_eq!(round[kind]["node_calls_per_create"], 3.0, "{kind}: {round}");
            // Less what the relay spends idle over as long: less, not
            // nothing (24 nodes keep a relay nearly idle).
            let (all, less) = (
                round[kind]["relay_cpu_us_per_create"].as_f64().unwrap(),
                round[kind]["relay_cpu_us_per_create_less_idle"]
                    .as_f64()
                    .unwrap(),
            );
            assert!(less > 0.0 && less <= all, "{kind}: {round}");
        }
        let idle = round["relay_idle_cpu_share"].as_f64().unwrap();
        assert!((0.0..1.0).contains(&idle), "an idle relay busy: {round}");
        assert!(round["fleet_over_nodes"].as_f64().unwrap() > 0.0, "{round}");
        assert!(
            round["fleet_over_nodes_less_idle"].as_f64().unwrap() > 0.0,
            "{round}"
        );
    }
    let fresh = &r["freshness"];
    assert_eq!(fresh["not_listed_within_5s"], 0, "{r}");
    assert!(
        fresh["made_on_node_until_listed"]["p99_us"]
            .as_f64()
            .unwrap()
            > 0.0,
        "{r}"
    );
}
