//! The fleet as one Docker host: placement of new containers by Swarm's
//! filters and strategies, and the per-tenant view of every node's facts,
//! containers and images that the placement and the fleet's reads answer
//! from.
//!
//! Below the front, above the router: the front's `/fleet` adapter asks
//! this module where a container goes or where one is, then carries the
//! call like any `/nodes/<id>` call. The placement is a pure function
//! ([`placement::place`]) over a made-up or cached [`view`]; nothing here
//! opens a stream or knows HTTP.

pub mod ask;
pub mod cache;
pub mod expr;
pub mod filter;
pub mod index;
pub mod news;
pub mod placement;
pub mod reach;
pub mod reschedule;
pub mod strategy;
pub mod view;
pub mod watch;

pub use ask::Ask;
pub use placement::{place, NoNode, Placement};
pub use strategy::StrategyName;
pub use view::Node;
