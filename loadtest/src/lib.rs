//! `tunnelgate-loadtest`: many simulated agents and control-plane clients
//! against a real relay process, on loopback only.
//!
//! Simulated agents are real agent sessions (the agent-side library over
//! real QUIC or TLS/TCP) whose "daemon" is the [`synthetic_docker`]
//! responder, so the relay is the thing under load. Every scenario is
//! bounded in count and in time and stops by itself.

pub mod client;
pub mod cluster;
pub mod etcd_proc;
pub mod fleet;
pub mod fleet_endpoint;
pub mod forward;
pub mod helper_proc;
pub mod progress;
pub mod relay_proc;
pub mod scenarios;
pub mod synthetic_docker;
pub mod synthetic_fleet;
