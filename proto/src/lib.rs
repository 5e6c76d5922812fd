//! The tunnelgate wire protocol, sans IO.
//!
//! Bytes go in, messages come out, and back. This crate owns the frame
//! codec ([`frame`]), the messages exchanged on an agent session's control
//! stream and at the head of every data stream ([`message`]), protocol
//! versions ([`version`]) and the control-stream state machines for both
//! ends ([`control`]).
//!
//! It must not do IO, spawn tasks or read clocks: time arrives as a `now`
//! argument, so every behaviour here is testable without a runtime.
//!
//! ```text
//! agent                                   relay
//!   | -- control stream: Hello ----------->  |   (or Enroll, on first contact)
//!   | <------------------------- Welcome --  |
//!   | -- Heartbeat{seq, rtt} ------------->  |   every heartbeat interval
//!   | <--------------------- HeartbeatAck -  |
//!   | -- NodeUpdate (daemon up/down) ----->  |
//!   | <--------------------------- Drain --  |   relay shutting down: reconnect
//!   |                                        |
//!   | <-- data stream: StreamHeader -------  |   one per control-plane call,
//!   | <-- request bytes (pipelined) -------  |   sent without waiting
//!   | -- StreamReply (accept | error) ---->  |   before any byte reaches the daemon
//!   | <=========== raw bytes ============>   |   half-close carried through
//! ```
#![warn(missing_docs)]

pub mod control;
pub mod docker_api;
pub mod frame;
pub mod ids;
pub mod message;
pub mod rendezvous;
pub mod token;
pub mod trace;
pub mod version;

pub use ids::{NodeId, NodeKey, RelayId, RequestId, TenantId};
pub use version::ProtocolVersion;
