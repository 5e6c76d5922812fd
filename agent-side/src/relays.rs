//! Which relays this agent keeps sessions with.
//!
//! The agent starts from its `--relay` addresses. Once a relay welcomes
//! it, the relay's membership list says which relays the cluster has, and
//! every later change comes the same way. Of the members that are not
//! draining, the agent picks `--relay-sessions` K by rendezvous hashing of
//! its node id: every agent ranks every relay by a hash of the pair and
//! takes its top K, so a fleet spreads evenly over the relays, and a relay
//! joining or leaving moves only the agents whose top K it enters or
//! leaves.
//!
//! Each session is a *slot*. A slot that holds a chosen relay keeps it,
//! so a membership change never swaps two healthy sessions; chosen
//! relays nobody holds go to the slots that hold none of them.
//!
//! This module decides; it never dials. Outside a cluster (a relay that
//! sends no membership, or one member) it is one slot on the first
//! address, as before clusters.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::watch;
use tunnelgate_proto::message::RelayMember;
use tunnelgate_proto::rendezvous::choose;
use tunnelgate_proto::{NodeId, RelayId};

/// Where a slot should hold its session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The relay, when known from the membership (not for a bare seed).
    pub relay_id: Option<RelayId>,
    /// What to dial.
    pub addr: String,
}

#[derive(Debug)]
struct Inner {
    seeds: Vec<String>,
    members: Vec<RelayMember>,
    /// The address that last reached each relay: the agent may reach a
    /// relay by another name than the one it advertises.
    reached: HashMap<RelayId, String>,
    /// The relay each slot's current session is with, once welcomed.
    holding: Vec<Option<RelayId>>,
    assignment: Vec<Option<Target>>,
    /// The window the last membership change asked moves to spread over.
    spread: std::time::Duration,
    /// Relays passed over (out of reach, or busy), and until when.
    down: HashMap<RelayId, std::time::Instant>,
}

/// How long a relay that could not be reached is passed over. Its lease
/// may list it for seconds after it died, and if every relay this agent
/// holds died, no live one is there to say so.
const DOWN_FOR: std::time::Duration = std::time::Duration::from_secs(10);

/// Whether any slot was ever welcomed.
type Welcomed = watch::Sender<bool>;

/// The agent's view of the cluster and what each slot should hold.
#[derive(Debug)]
pub struct Relays {
    node_id: NodeId,
    inner: Mutex<Inner>,
    changed: watch::Sender<u64>,
    welcomed: Welcomed,
}

impl Relays {
    /// Starts from `seeds` with `k` slots.
    pub fn new(node_id: NodeId, seeds: Vec<String>, k: usize) -> Self {
        let mut inner = Inner {
            seeds,
            members: Vec::new(),
            reached: HashMap::new(),
            holding: vec![None; k.max(1)],
            assignment: Vec::new(),
            spread: std::time::Duration::ZERO,
            down: HashMap::new(),
        };
        inner.assignment = Self::assign(&node_id, &inner);
        Self {
            node_id,
            inner: Mutex::new(inner),
            changed: watch::channel(0).0,
            welcomed: watch::channel(false).0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many slots there are.
    pub fn slots(&self) -> usize {
        self.lock().holding.len()
    }

    /// Fires whenever any slot's target changes, or a slot is welcomed.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Turns true once any slot has been welcomed (so the node has its
    /// certificate and the membership is known, if there is one).
    pub fn welcomed_once(&self) -> watch::Receiver<bool> {
        self.welcomed.subscribe()
    }

    /// Where `slot` should hold its session now; `None`: nowhere (fewer
    /// live relays than slots).
    pub fn target(&self, slot: usize) -> Option<Target> {
        self.lock().assignment.get(slot).cloned().flatten()
    }

    /// Slot `slot`'s session, dialled at `target`, was welcomed by
    /// `relay_id`, which sent `members` (empty from a relay outside a
    /// cluster).
    pub fn welcomed(
        &self,
        slot: usize,
        target: &Target,
        relay_id: &RelayId,
        members: Vec<RelayMember>,
    ) {
        let mut inner = self.lock();
        // Only an address dialled for this very relay is known to reach
        // it: a seed behind a load balancer reaches whichever relay.
        if target.relay_id.as_ref() == Some(relay_id) {
            inner.reached.insert(relay_id.clone(), target.addr.clone());
        }
        if let Some(h) = inner.holding.get_mut(slot) {
            *h = Some(relay_id.clone());
        }
        if !members.is_empty() {
            inner.members = members;
        }
        self.reassign(&mut inner);
        // Holding a relay may make the slot's target another one even when
        // the assignment is unchanged: say so either way.
        self.changed.send_modify(|v| *v += 1);
        self.welcomed.send_replace(true);
    }

    /// The membership changed (a relay's update or drain); moves it
    /// causes spread over `spread` (zero: the agent's default).
    pub fn members(&self, members: Vec<RelayMember>, spread: std::time::Duration) {
        if members.is_empty() {
            return;
        }
        let mut inner = self.lock();
        inner.members = members;
        inner.spread = spread;
        self.reassign(&mut inner);
    }

    /// The window the last membership change asked moves to spread over.
    pub fn spread(&self) -> std::time::Duration {
        self.lock().spread
    }

    /// When the first relay passed over is due to be tried again.
    pub fn next_return(&self) -> Option<std::time::Instant> {
        self.lock().down.values().min().copied()
    }

    /// Chooses again, now that some relays passed over may be back.
    pub fn refresh(&self) {
        let mut inner = self.lock();
        let before = inner.down.len();
        let now = std::time::Instant::now();
        inner.down.retain(|_, until| *until > now);
        if inner.down.len() != before {
            self.reassign(&mut inner);
        }
    }

    /// `relay_id` could not be reached: pass it over for a while.
    pub fn unreachable(&self, relay_id: &RelayId) {
        let mut inner = self.lock();
        inner
            .down
            .insert(relay_id.clone(), std::time::Instant::now() + DOWN_FOR);
        self.reassign(&mut inner);
        self.changed.send_modify(|v| *v += 1);
    }

    /// A relay refused a handshake as busy: pass it over until it asked
    /// to be tried again, and learn the membership it sent if this agent
    /// has none yet (a first contact in a reconnect storm).
    pub fn busy(&self, hint: tunnelgate_proto::message::BusyHint) {
        let mut inner = self.lock();
        let until =
            std::time::Instant::now() + std::time::Duration::from_millis(hint.retry_after_ms);
        inner.down.insert(hint.relay_id, until);
        if inner.members.len() <= 1 && hint.members.len() > 1 {
            inner.members = hint.members;
        }
        self.reassign(&mut inner);
        self.changed.send_modify(|v| *v += 1);
    }

    /// Slot `slot` holds no session any more.
    pub fn lost(&self, slot: usize) {
        let mut inner = self.lock();
        if let Some(h) = inner.holding.get_mut(slot) {
            *h = None;
        }
        self.reassign(&mut inner);
    }

    /// The relays the slots hold now, for the log and tests.
    pub fn holding(&self) -> Vec<Option<RelayId>> {
        self.lock().holding.clone()
    }

    fn reassign(&self, inner: &mut Inner) {
        let next = Self::assign(&self.node_id, inner);
        if next != inner.assignment {
            inner.assignment = next;
            self.changed.send_modify(|v| *v += 1);
        }
    }

    fn from_seeds(inner: &Inner) -> Vec<Option<Target>> {
        (0..inner.holding.len())
            .map(|i| {
                inner.seeds.get(i).map(|addr| Target {
                    relay_id: None,
                    addr: addr.clone(),
                })
            })
            .collect()
    }

    fn assign(node: &NodeId, inner: &Inner) -> Vec<Option<Target>> {
        let slots = inner.holding.len();
        // Outside a cluster: one session per distinct seed, up to K; a
        // relay behind one name answers as whichever relay it is.
        if inner.members.len() <= 1 {
            return Self::from_seeds(inner);
        }
        let up: Vec<RelayMember> = inner
            .members
            .iter()
            .filter(|m| {
                inner
                    .down
                    .get(&m.relay_id)
                    .is_none_or(|until| *until <= std::time::Instant::now())
            })
            .cloned()
            .collect();
        let chosen = choose(node.as_str(), &up, slots);
        if chosen.is_empty() {
            // Every relay known is draining or out of reach: back to the
            // addresses the agent was given, where another may answer.
            return Self::from_seeds(inner);
        }
        let target = |id: &RelayId| Target {
            relay_id: Some(id.clone()),
            addr: inner.reached.get(id).cloned().unwrap_or_else(|| {
                inner
                    .members
                    .iter()
                    .find(|m| &m.relay_id == id)
                    .map(|m| m.agent_addr.clone())
                    .unwrap_or_default()
            }),
        };
        // A chosen relay is kept by the first slot that holds it. Two slots
        // can hold one relay (both fell back to a seed that reaches it
        // while every member was passed over); the second must move, or
        // the agent would keep two sessions on one relay for good.
        let mut kept: Vec<&RelayId> = Vec::new();
        let mut out: Vec<Option<Target>> = inner
            .holding
            .iter()
            .map(|h| {
                let id = h.as_ref().filter(|id| chosen.contains(id))?;
                if kept.contains(&id) {
                    return None;
                }
                kept.push(id);
                Some(target(id))
            })
            .collect();
        let mut free = chosen.iter().filter(|id| !kept.contains(id));
        for slot in out.iter_mut().filter(|s| s.is_none()) {
            *slot = free.next().map(target);
        }
        out
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn member(id: &str, draining: bool) -> RelayMember {
        RelayMember {
            relay_id: RelayId::new(id).unwrap(),
            agent_addr: format!("{id}:7443"),
            draining,
        }
    }

    /// relay-a, relay-b and relay-c, none draining.
    pub(crate) fn three_members() -> Vec<RelayMember> {
        ["relay-a", "relay-b", "relay-c"]
            .iter()
            .map(|id| member(id, false))
            .collect()
    }

    fn ids(targets: &[Option<Target>]) -> Vec<String> {
        targets
            .iter()
            .map(|t| {
                t.as_ref()
                    .and_then(|t| t.relay_id.as_ref())
                    .map_or("-".into(), |r| r.to_string())
            })
            .collect()
    }

    #[test]
    fn a_fleet_spreads_evenly_and_a_leaving_relay_moves_only_its_agents() {
        let members = three_members();
        let nodes: Vec<NodeId> = (0..3000)
            .map(|i| NodeId::new(format!("node-{i}")).unwrap())
            .collect();
        let mut per_relay: HashMap<RelayId, usize> = HashMap::new();
        for n in &nodes {
            for r in choose(n.as_str(), &members, 2) {
                *per_relay.entry(r).or_default() += 1;
            }
        }
        let (min, max) = (
            *per_relay.values().min().unwrap(),
            *per_relay.values().max().unwrap(),
        );
        assert_eq!(per_relay.values().sum::<usize>(), 6000);
        assert!(
            max as f64 / min as f64 <= 1.1,
            "sessions per relay {per_relay:?}"
        );

        // relay-c drains: only agents that had it move, each to the one
        // relay it lacked.
        let mut draining = members.clone();
        draining[2].draining = true;
        for n in &nodes {
            let before = choose(n.as_str(), &members, 2);
            let after = choose(n.as_str(), &draining, 2);
            let c = RelayId::new("relay-c").unwrap();
            if before.contains(&c) {
                assert!(!after.contains(&c));
            } else {
                let (mut b, mut a) = (before.clone(), after.clone());
                b.sort();
                a.sort();
                assert_eq!(b, a, "{n} moved though relay-c was none of its");
            }
        }
    }

    #[test]
    fn slots_keep_chosen_relays_and_take_free_ones() {
        let node = NodeId::new("web-1").unwrap();
        let relays = Relays::new(node.clone(), vec!["lb:7443".into()], 2);
        assert_eq!(relays.target(0).unwrap().addr, "lb:7443");
        assert_eq!(
            relays.target(1),
            None,
            "one seed: one session until members are known"
        );

        let all = three_members();
        let top = choose(node.as_str(), &all, 3);
        // The seed reached the relay the hash ranks last.
        let seed = relays.target(0).unwrap();
        relays.welcomed(0, &seed, &top[2], all.clone());
        let t = relays.lock().assignment.clone();
        assert_eq!(
            ids(&t),
            [top[0].to_string(), top[1].to_string()],
            "slot 0 holds a relay outside the top 2: it moves"
        );
        relays.lost(0);
        let t = relays.lock().assignment.clone();
        assert_eq!(ids(&t), [top[0].to_string(), top[1].to_string()]);

        // Slot 1 holds the top relay: it keeps it, slot 0 takes the other.
        let dialled = Target {
            relay_id: Some(top[0].clone()),
            addr: "x:1".into(),
        };
        relays.welcomed(1, &dialled, &top[0], vec![]);
        let t = relays.lock().assignment.clone();
        assert_eq!(ids(&t), [top[1].to_string(), top[0].to_string()]);
        assert_eq!(
            relays.target(1).unwrap().addr,
            "x:1",
            "the address that reached it"
        );
        assert_eq!(relays.target(0).unwrap().addr, format!("{}:7443", top[1]));

        // The top relay drains: slot 1 moves to the third, slot 0 stays.
        let mut changes = relays.subscribe();
        let drained: Vec<_> = all
            .iter()
            .map(|m| member(m.relay_id.as_str(), m.relay_id == top[0]))
            .collect();
        relays.members(drained, std::time::Duration::ZERO);
        assert!(changes.has_changed().unwrap());
        let t = relays.lock().assignment.clone();
        assert_eq!(ids(&t), [top[1].to_string(), top[2].to_string()]);
        changes.borrow_and_update();
        relays.members(vec![], std::time::Duration::ZERO);
        assert!(
            !changes.has_changed().unwrap(),
            "an empty list changes nothing"
        );
    }

    #[test]
    fn two_slots_on_one_relay_split_once_another_is_chosen() {
        let node = NodeId::new("web-1").unwrap();
        let relays = Relays::new(node.clone(), vec!["lb:7443".into()], 2);
        let all = three_members();
        let top = choose(node.as_str(), &all, 3);
        let seed = relays.target(0).unwrap();
        relays.welcomed(0, &seed, &top[0], all.clone());
        // Every member passed over: the slots fall back to the seed, and
        // behind it the same relay answers slot 1 too.
        for m in &all {
            relays.unreachable(&m.relay_id);
        }
        let fallback = relays.target(0).unwrap();
        assert_eq!(fallback.addr, "lb:7443");
        relays.welcomed(1, &fallback, &top[0], vec![]);
        assert_eq!(
            relays.holding(),
            [Some(top[0].clone()), Some(top[0].clone())]
        );

        // The others are back: one slot keeps the top relay, the other
        // moves to the second, instead of both staying on one relay.
        relays.lock().down.clear();
        relays.refresh();
        relays.members(all.clone(), std::time::Duration::ZERO);
        let t = relays.lock().assignment.clone();
        assert_eq!(ids(&t), [top[0].to_string(), top[1].to_string()]);
    }
}
