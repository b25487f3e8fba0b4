//! The tokens one source holds, by instance ([`InstanceId::single`] for a single-token source,
//! one per tenant otherwise), in instance order.
//!
//! A sorted vector rather than a `BTreeMap`: almost every source holds exactly one instance,
//! and a B-tree node for one entry costs ~1.8 KiB where this costs the entry alone (at 10 000
//! sources that was 12 MiB; BENCHMARKS.md). Tenant lists stay in the thousands at most, where
//! binary search and the occasional shift are cheap.

use crate::names::InstanceId;

pub struct Instances<T> {
    entries: Vec<(InstanceId, T)>,
}

impl<T> Default for Instances<T> {
    fn default() -> Self {
        Instances {
            entries: Vec::new(),
        }
    }
}

impl<T> Instances<T> {
    fn position(&self, key: &str) -> Result<usize, usize> {
        self.entries.binary_search_by(|(k, _)| k.as_str().cmp(key))
    }

    pub fn get(&self, key: &str) -> Option<&T> {
        self.position(key).ok().map(|i| &self.entries[i].1)
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut T> {
        self.position(key).ok().map(|i| &mut self.entries[i].1)
    }

    /// Inserts or replaces the value of `key`.
    pub fn insert(&mut self, key: InstanceId, value: T) {
        match self.position(key.as_str()) {
            Ok(i) => self.entries[i].1 = value,
            Err(i) => {
                if self.entries.capacity() == 0 {
                    self.entries.reserve_exact(1); // the common single-instance case
                }
                self.entries.insert(i, (key, value));
            }
        }
    }

    pub fn remove(&mut self, key: &str) -> Option<T> {
        self.position(key).ok().map(|i| self.entries.remove(i).1)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&InstanceId, &T)> {
        self.entries.iter().map(|(k, v)| (k, v))
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&InstanceId, &mut T)> {
        self.entries.iter_mut().map(|(k, v)| (&*k, v))
    }

    pub fn keys(&self) -> impl Iterator<Item = &InstanceId> {
        self.entries.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.entries.iter().map(|(_, v)| v)
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.entries.iter_mut().map(|(_, v)| v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> InstanceId {
        InstanceId::tenant(s).unwrap()
    }

    #[test]
    fn behaves_like_an_ordered_map() {
        let mut m = Instances::default();
        for k in ["b", "a", "c"] {
            m.insert(id(k), k.to_uppercase());
        }
        m.insert(id("a"), "A2".to_owned());
        assert_eq!(m.len(), 3);
        assert_eq!(
            m.keys().map(InstanceId::as_str).collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        assert_eq!(m.get("a").map(String::as_str), Some("A2"));
        assert_eq!(m.remove("b").as_deref(), Some("B"));
        assert_eq!(m.remove("b"), None);
        assert_eq!(m.get("b"), None);
        if let Some(v) = m.get_mut("c") {
            v.push('!');
        }
        assert_eq!(
            m.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>(),
            ["a=A2", "c=C!"]
        );
    }

    #[test]
    fn a_single_instance_allocates_one_entry() {
        let mut m = Instances::default();
        m.insert(InstanceId::single(), [0u8; 100]);
        assert_eq!(m.entries.capacity(), 1);
    }
}
