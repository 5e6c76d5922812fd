//! What every load-tester test binary starts from.

use tunnelgate_agent::config::TransportChoice;
use tunnelgate_loadtest::relay_proc::default_relay_bin;
use tunnelgate_loadtest::scenarios::Setup;

/// A setup on the relay binary `cargo test --workspace` built, with
/// agents on `transport` and the synthetic Docker responder.
pub fn setup(transport: TransportChoice) -> Setup {
    let relay_bin = default_relay_bin();
    assert!(
        relay_bin.exists(),
        "{} is missing; `cargo test --workspace` builds it (or `cargo build -p tunnelgate-relay`)",
        relay_bin.display()
    );
    Setup {
        relay_bin,
        transport,
        responder_port: 0,
        responder: None,
        relay_args: vec![],
    }
}
