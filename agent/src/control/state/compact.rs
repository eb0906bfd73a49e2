//! The compact pieces of a file's record: its versions in one sorted vector
//! (a file of one version costs one small allocation, not a B-tree node),
//! and holder sets shared by every version placed on the same agents.
//! Both serialise as the types they replaced (a map of versions, a list of
//! addresses), so snapshots keep their format.

use super::VersionMeta;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::borrow::Borrow;
use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::{Arc, Mutex, PoisonError};

/// The agents holding a version (the planned chain while pending), in
/// order. Equal sets share one allocation, process-wide: a million versions
/// on ten agents hold a few hundred distinct sets.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Holders(Arc<[SocketAddr]>);

/// Every holder set in use, so equal ones are shared. Sets no version holds
/// any more are dropped once the table has doubled since the last sweep.
struct Interned {
    sets: HashSet<Holders>,
    swept_at: usize,
}

static INTERNED: Mutex<Option<Interned>> = Mutex::new(None);

/// Fewest sets before the first sweep.
const SWEEP_FROM: usize = 1024;

impl Holders {
    /// The shared set equal to `addrs`.
    pub fn new(addrs: &[SocketAddr]) -> Self {
        let mut guard = INTERNED.lock().unwrap_or_else(PoisonError::into_inner);
        let table = guard.get_or_insert_with(|| Interned {
            sets: HashSet::new(),
            swept_at: 0,
        });
        if let Some(h) = table.sets.get(addrs) {
            return h.clone();
        }
        if table.sets.len() >= (2 * table.swept_at).max(SWEEP_FROM) {
            table.sets.retain(|h| Arc::strong_count(&h.0) > 1);
            table.swept_at = table.sets.len();
        }
        let h = Holders(addrs.into());
        table.sets.insert(h.clone());
        h
    }
}

impl Default for Holders {
    fn default() -> Self {
        Holders::new(&[])
    }
}

impl Deref for Holders {
    type Target = [SocketAddr];
    fn deref(&self) -> &[SocketAddr] {
        &self.0
    }
}

impl Borrow<[SocketAddr]> for Holders {
    fn borrow(&self) -> &[SocketAddr] {
        &self.0
    }
}

impl<'a> IntoIterator for &'a Holders {
    type Item = &'a SocketAddr;
    type IntoIter = std::slice::Iter<'a, SocketAddr>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl Serialize for Holders {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.as_ref().serialize(s)
    }
}

impl<'de> Deserialize<'de> for Holders {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Vec::<SocketAddr>::deserialize(d).map(|v| Holders::new(&v))
    }
}

/// A file's versions by number, ascending.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Versions(Vec<(u64, VersionMeta)>);

impl Versions {
    fn find(&self, version: u64) -> Result<usize, usize> {
        self.0.binary_search_by_key(&version, |(n, _)| *n)
    }

    pub fn get(&self, version: &u64) -> Option<&VersionMeta> {
        self.find(*version).ok().map(|i| &self.0[i].1)
    }

    pub fn get_mut(&mut self, version: &u64) -> Option<&mut VersionMeta> {
        self.find(*version).ok().map(|i| &mut self.0[i].1)
    }

    /// Adds or replaces `version`.
    pub fn insert(&mut self, version: u64, meta: VersionMeta) {
        match self.find(version) {
            Ok(i) => self.0[i].1 = meta,
            Err(i) => {
                // Most files have one or two versions: no spare room for them.
                if self.0.len() < 4 {
                    self.0.reserve_exact(1);
                }
                self.0.insert(i, (version, meta));
            }
        }
    }

    pub fn remove(&mut self, version: &u64) -> Option<VersionMeta> {
        let i = self.find(*version).ok()?;
        Some(self.0.remove(i).1)
    }

    pub fn retain(&mut self, mut keep: impl FnMut(&u64, &mut VersionMeta) -> bool) {
        self.0.retain_mut(|(n, v)| keep(n, v));
    }

    pub fn clear(&mut self) {
        self.0 = Vec::new();
    }

    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (&u64, &VersionMeta)> {
        self.0.iter().map(|(n, v)| (n, v))
    }

    pub fn values(&self) -> impl DoubleEndedIterator<Item = &VersionMeta> {
        self.0.iter().map(|(_, v)| v)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Serialize for Versions {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(n, v)| (n, v)))
    }
}

impl<'de> Deserialize<'de> for Versions {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let map = BTreeMap::<u64, VersionMeta>::deserialize(d)?;
        let mut v = Vec::with_capacity(map.len());
        v.extend(map);
        Ok(Versions(v))
    }
}

#[cfg(test)]
mod tests {
    use super::super::VersionState;
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn meta(size: u64, holders: &[SocketAddr]) -> VersionMeta {
        VersionMeta {
            size,
            checksum: [size as u8; 32],
            replicas: Holders::new(holders),
            committed_ms: 5,
            state: VersionState::Committed,
        }
    }

    #[test]
    fn equal_holder_sets_share_one_allocation() {
        let (a, b) = (
            Holders::new(&[addr(1), addr(2)]),
            Holders::new(&[addr(1), addr(2)]),
        );
        assert!(Arc::ptr_eq(&a.0, &b.0));
        assert_ne!(Holders::new(&[addr(2), addr(1)]), a, "order is kept");
        assert_eq!(&*a, &[addr(1), addr(2)]);
    }

    #[test]
    fn versions_stay_sorted_and_encode_as_the_map_they_replace() {
        let mut v = Versions::default();
        for n in [3, 1, 2] {
            v.insert(n, meta(n, &[addr(1), addr(2)]));
        }
        v.insert(2, meta(20, &[addr(3)]));
        assert_eq!(v.iter().map(|(n, _)| *n).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(v.get(&2).map(|m| m.size), Some(20));
        assert_eq!(v.remove(&1).map(|m| m.size), Some(1));
        assert!(v.get(&1).is_none());
        let map: BTreeMap<u64, VersionMeta> = v.iter().map(|(n, m)| (*n, m.clone())).collect();
        let bytes = postcard::to_allocvec(&v).unwrap();
        assert_eq!(bytes, postcard::to_allocvec(&map).unwrap());
        let back: Versions = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, v);
        // A holder set decodes as the list it was, shared again.
        let h = Holders::new(&[addr(7), addr(8)]);
        let list = postcard::to_allocvec(&vec![addr(7), addr(8)]).unwrap();
        assert_eq!(postcard::to_allocvec(&h).unwrap(), list);
        let back: Holders = postcard::from_bytes(&list).unwrap();
        assert!(Arc::ptr_eq(&back.0, &h.0));
    }
}
