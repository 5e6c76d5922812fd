//! Which relays a node's agent holds sessions with: rendezvous hashing of
//! the node id over the live relays, the same on every agent and relay of
//! a release, so a fleet spreads evenly and a relay joining or leaving
//! moves only the agents whose top K it enters or leaves. The relay uses
//! it too, to name the relay a refused agent should try instead.

use crate::message::RelayMember;
use crate::RelayId;

/// Rendezvous score of `relay` for `node`: FNV-1a over both names, then
/// a 64-bit finalizer so close names score far apart. Stable across
/// builds and platforms, so every agent of a release ranks alike.
fn score(node: &str, relay: &RelayId) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in node.bytes().chain([0]).chain(relay.as_str().bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The `k` relays `node` should hold sessions with, best first.
pub fn choose(node: &str, members: &[RelayMember], k: usize) -> Vec<RelayId> {
    let mut live: Vec<&RelayMember> = members.iter().filter(|m| !m.draining).collect();
    live.sort_by_key(|m| std::cmp::Reverse(score(node, &m.relay_id)));
    live.into_iter()
        .take(k)
        .map(|m| m.relay_id.clone())
        .collect()
}
