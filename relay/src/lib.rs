//! The tunnelgate relay.
//!
//! Calls flow one way, and each module imports only from those below it:
//!
//! ```text
//! relay            lifecycle: bind, run, drain                (relay.rs)
//!  ├─ front        the Docker API: parse, admit, dispatch     (front/)
//!  │   ├─ fleet    the fleet as one host: placement, the cached view, rescheduling
//!  │   ├─ router   where a node is: local session, peer relay, offline, unknown
//!  │   └─ upstream how a routed call is carried: tunnel (session or peer), kept streams, splice
//!  ├─ listen       agent listeners: handshake budget, enrolment, control stream;
//!  │               the peer listener (calls a peer relay carries here)
//!  ├─ registry     members and node locations: memory, or etcd shared by a cluster
//!  ├─ sessions     the local session table
//!  ├─ auth, audit  who calls; one line per call
//!  ├─ identity     the installation CA
//!  ├─ state        the state dir and its in-memory cache
//!  └─ net, metrics, config, error, respond
//! ```
//!
//! This crate must not know how an agent serves a stream: it speaks only
//! the protocol of `tunnelgate-proto` over `tunnelgate-session`. Its
//! binary's commands (the admin CLI, the quickstart) live in `main.rs`
//! and `cli/`.

pub mod audit;
pub mod auth;
pub mod authz;
pub mod config;
pub mod error;
pub mod fleet;
pub mod front;
pub mod identity;
pub mod listen;
pub mod metrics;
pub mod net;
pub mod registry;
mod relay;
pub mod respond;
pub mod router;
pub mod scope;
pub mod sessions;
pub mod state;
pub mod upstream;

pub use config::{Config, ServeArgs};
pub use relay::{reconnect_spread, ListeningLine, Relay, RelayError, RelayHandle};
