//! Calls in flight per node and per tenant, against the configured
//! limits: each call holds a slot of both until its last byte is relayed.

use std::sync::Arc;

use dashmap::DashMap;
use tunnelgate_proto::{NodeKey, TenantId};

use crate::metrics::Limit;

/// Calls in flight per node and per tenant, against the configured limits.
#[derive(Debug, Default)]
pub struct StreamSlots {
    per_node: DashMap<NodeKey, usize>,
    per_tenant: DashMap<TenantId, usize>,
}

/// The slots one call holds; released when dropped.
pub struct Slots {
    table: Arc<StreamSlots>,
    key: NodeKey,
    /// Whether it holds one of the tenant's too.
    tenant: bool,
}

impl StreamSlots {
    /// Takes a slot of `key`'s node and, unless `per_tenant` is `None`,
    /// of its tenant, or names the limit that is reached.
    pub fn acquire(
        self: &Arc<Self>,
        key: &NodeKey,
        per_node: usize,
        per_tenant: Option<usize>,
    ) -> Result<Slots, Limit> {
        if let Some(max) = per_tenant {
            if !take(&self.per_tenant, &key.tenant, max) {
                return Err(Limit::StreamsPerTenant);
            }
        }
        if !take(&self.per_node, key, per_node) {
            if per_tenant.is_some() {
                give_back(&self.per_tenant, &key.tenant);
            }
            return Err(Limit::StreamsPerNode);
        }
        Ok(Slots {
            table: self.clone(),
            key: key.clone(),
            tenant: per_tenant.is_some(),
        })
    }
}

fn take<K: std::hash::Hash + Eq + Clone>(map: &DashMap<K, usize>, k: &K, max: usize) -> bool {
    let mut n = map.entry(k.clone()).or_insert(0);
    if *n >= max {
        return false;
    }
    *n += 1;
    true
}

fn give_back<K: std::hash::Hash + Eq>(map: &DashMap<K, usize>, k: &K) {
    if let Some(mut n) = map.get_mut(k) {
        *n = n.saturating_sub(1);
    }
    // Idle nodes and tenants leave no entry behind.
    map.remove_if(k, |_, n| *n == 0);
}

impl Drop for Slots {
    fn drop(&mut self) {
        give_back(&self.table.per_node, &self.key);
        if self.tenant {
            give_back(&self.table.per_tenant, &self.key.tenant);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_name_the_limit_reached_and_come_back_when_dropped() {
        let table = Arc::new(StreamSlots::default());
        let key = NodeKey::parse("acme/a").unwrap();
        let other = NodeKey::parse("acme/b").unwrap();
        let first = table.acquire(&key, 1, Some(2)).unwrap();
        assert_eq!(
            table.acquire(&key, 1, Some(2)).err(),
            Some(Limit::StreamsPerNode)
        );
        let second = table.acquire(&other, 1, Some(2)).unwrap();
        let c = NodeKey::parse("acme/c").unwrap();
        assert_eq!(
            table.acquire(&c, 1, Some(2)).err(),
            Some(Limit::StreamsPerTenant)
        );
        // Not counted for the tenant: past its limit, and leaving the
        // tenant's count as it was.
        let uncounted = table.acquire(&c, 1, None).unwrap();
        assert_eq!(*table.per_tenant.get(&key.tenant).unwrap(), 2);
        assert_eq!(
            table.acquire(&c, 1, None).err(),
            Some(Limit::StreamsPerNode)
        );
        drop((first, second, uncounted));
        assert!(table.acquire(&key, 1, Some(2)).is_ok());
        assert!(
            table.per_node.is_empty() && table.per_tenant.is_empty(),
            "idle entries are dropped"
        );
    }
}
