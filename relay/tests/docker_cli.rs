//! The real `docker` CLI through a real relay and agent, against a real
//! dockerd: every scenario of the acceptance list, run directly against
//! the daemon (the baseline, which also proves the scenario), then through
//! the relay over each transport with the same scenario code.

// A panic is a test failure report, in helpers as in #[test] fns.
#![allow(clippy::unwrap_used)]
// These tests drive processes from plain threads, where sleeping is fine.
#![allow(clippy::disallowed_methods)]

mod support;

use std::time::Duration;

use support::{scenarios, Docker, Tunnel};

fn through(transport: &str) -> Vec<(&'static str, Duration)> {
    let tunnel = Tunnel::start_with(
        &format!("scenario-{transport}"),
        &["--transport", transport],
    )
    .expect("relay and agent start");
    let node = tunnel.relay.wait_for_node(&tunnel.node).unwrap();
    assert_eq!(
        node["transport"], transport,
        "the session runs over the requested transport"
    );
    scenarios::run_all(&tunnel.docker())
        .unwrap_or_else(|e| panic!("scenarios fail over {transport}: {e:#}"))
}

#[test]
fn docker_cli_scenarios_over_quic_and_tcp() {
    let direct =
        scenarios::run_all(&Docker::direct()).expect("scenarios pass directly against dockerd");
    let quic = through("quic");
    let tcp = through("tcp");

    // A report, not an assertion: timings on a shared machine are noise.
    let secs = |d: &Duration| d.as_secs_f64();
    let total = |t: &[(&str, Duration)]| t.iter().map(|(_, d)| secs(d)).sum::<f64>();
    eprintln!(
        "{:<34} {:>8} {:>8} {:>8} {:>6} {:>6}",
        "scenario", "direct s", "quic s", "tcp s", "q/d", "t/d"
    );
    for (((name, d), (_, q)), (_, t)) in direct.iter().zip(&quic).zip(&tcp) {
        eprintln!(
            "{name:<34} {:>8.2} {:>8.2} {:>8.2} {:>6.2} {:>6.2}",
            secs(d),
            secs(q),
            secs(t),
            secs(q) / secs(d),
            secs(t) / secs(d)
        );
    }
    let (d, q, t) = (total(&direct), total(&quic), total(&tcp));
    eprintln!(
        "{:<34} {d:>8.2} {q:>8.2} {t:>8.2} {:>6.2} {:>6.2}",
        "total",
        q / d,
        t / d
    );
}
