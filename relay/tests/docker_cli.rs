//! The real `docker` CLI through a real relay and agent, against a real
//! dockerd: every scenario of the acceptance list, run first directly
//! against the daemon (the baseline, which also proves the scenario) and
//! then through the relay.

// These tests drive processes from plain threads, where sleeping is fine.
#![allow(clippy::disallowed_methods)]

mod support;

use std::time::Duration;

use support::{scenarios, Docker, Tunnel};

#[test]
fn docker_cli_scenarios_through_the_relay() {
    let direct =
        scenarios::run_all(&Docker::direct()).expect("scenarios pass directly against dockerd");
    let tunnel = Tunnel::start("scenario-node").expect("relay and agent start");
    let relayed = scenarios::run_all(&tunnel.docker()).expect("scenarios pass through the relay");

    // A report, not an assertion: timings on a shared machine are noise.
    let total = |t: &[(&str, Duration)]| t.iter().map(|(_, d)| d.as_secs_f64()).sum::<f64>();
    eprintln!(
        "{:<34} {:>9} {:>9} {:>6}",
        "scenario", "direct s", "relay s", "ratio"
    );
    for ((name, d), (_, r)) in direct.iter().zip(&relayed) {
        eprintln!(
            "{name:<34} {:>9.2} {:>9.2} {:>6.2}",
            d.as_secs_f64(),
            r.as_secs_f64(),
            r.as_secs_f64() / d.as_secs_f64()
        );
    }
    let (d, r) = (total(&direct), total(&relayed));
    eprintln!("{:<34} {d:>9.2} {r:>9.2} {:>6.2}", "total", r / d);
}
