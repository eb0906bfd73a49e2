//! The hash ring: live members ordered by ring hash. Each member probes its
//! `m` successors, so each member has `m` monitors (its predecessors).

use dml_shared::NodeId;

#[derive(Debug, Default, Clone)]
pub struct Ring {
    /// Live members, self included, sorted by (ring hash, id).
    nodes: Vec<NodeId>,
}

impl Ring {
    pub fn new(mut nodes: Vec<NodeId>) -> Self {
        // Cached: the key is a hash, and rings of thousands are rebuilt on every change.
        nodes.sort_by_cached_key(|n| (n.ring_hash(), *n));
        nodes.dedup();
        Self { nodes }
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    fn position(&self, id: &NodeId) -> Option<usize> {
        self.nodes
            .binary_search_by_key(&(id.ring_hash(), *id), |n| (n.ring_hash(), *n))
            .ok()
    }

    /// Up to `m` members after `id`, clockwise, `id` excluded.
    pub fn successors(&self, id: &NodeId, m: usize) -> Vec<NodeId> {
        self.walk(id, m, 1)
    }

    /// Up to `m` members before `id`, counter-clockwise: the members probing `id`.
    pub fn monitors(&self, id: &NodeId, m: usize) -> Vec<NodeId> {
        self.walk(id, m, self.nodes.len().saturating_sub(1))
    }

    fn walk(&self, id: &NodeId, m: usize, step: usize) -> Vec<NodeId> {
        let Some(start) = self.position(id) else {
            return Vec::new();
        };
        let n = self.nodes.len();
        (1..n)
            .map(|i| self.nodes[(start + i * step) % n])
            .take(m)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: u16) -> Vec<NodeId> {
        (0..n)
            .map(|i| NodeId::new(([127, 0, 0, 1], 8001 + i).into(), 7))
            .collect()
    }

    #[test]
    fn every_member_has_m_monitors_and_successors_mirror_them() {
        let ids = ids(10);
        let ring = Ring::new(ids.clone());
        for id in &ids {
            let succ = ring.successors(id, 3);
            assert_eq!(succ.len(), 3);
            assert!(!succ.contains(id));
            for s in succ {
                assert!(ring.monitors(&s, 3).contains(id));
            }
        }
    }

    #[test]
    fn small_rings_probe_everyone_else_once() {
        let ids = ids(3);
        let ring = Ring::new(ids.clone());
        let succ = ring.successors(&ids[0], 3);
        assert_eq!(succ.len(), 2);
        assert!(ring.successors(&ids[0], 3).iter().all(|s| *s != ids[0]));
        assert!(
            Ring::new(ids[..1].to_vec())
                .successors(&ids[0], 3)
                .is_empty()
        );
    }
}
