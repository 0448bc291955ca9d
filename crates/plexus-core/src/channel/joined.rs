//! The map of a connection's joined channels, by topic: a vector sorted by topic, searched by
//! bisection.
//!
//! Almost every connection joins one channel or a few, and a `HashMap` holding one entry
//! allocates room for four (its smallest table, ~380 bytes with the control bytes) in every
//! idle connection. Here the first join allocates room for exactly one entry, later ones grow
//! the vector as usual; lookups are `O(log n)` and a join or leave moves at most
//! `limits.max_channels_per_connection` entries (100 by default). See "Memory per idle
//! connection" in `BENCHMARKS.md`.

/// Topic → `V`, sorted by topic.
pub(crate) struct Joined<V> {
    entries: Vec<(Box<str>, V)>,
}

impl<V> Default for Joined<V> {
    fn default() -> Self {
        Joined {
            entries: Vec::new(),
        }
    }
}

impl<V> Joined<V> {
    fn find(&self, topic: &str) -> Result<usize, usize> {
        self.entries.binary_search_by(|(t, _)| (**t).cmp(topic))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn contains_key(&self, topic: &str) -> bool {
        self.find(topic).is_ok()
    }

    pub fn get(&self, topic: &str) -> Option<&V> {
        self.find(topic).ok().map(|i| &self.entries[i].1)
    }

    pub fn get_mut(&mut self, topic: &str) -> Option<&mut V> {
        self.find(topic).ok().map(|i| &mut self.entries[i].1)
    }

    /// Adds or replaces `topic`'s entry; returns the one replaced.
    pub fn insert(&mut self, topic: Box<str>, value: V) -> Option<V> {
        match self.find(&topic) {
            Ok(i) => Some(std::mem::replace(&mut self.entries[i].1, value)),
            Err(i) => {
                if self.entries.capacity() == 0 {
                    // The common case, one channel: exactly one entry's room, not four.
                    self.entries.reserve_exact(1);
                }
                self.entries.insert(i, (topic, value));
                None
            }
        }
    }

    pub fn remove_entry(&mut self, topic: &str) -> Option<(Box<str>, V)> {
        let i = self.find(topic).ok()?;
        let entry = self.entries.remove(i);
        if self.entries.is_empty() {
            // Nothing joined: no room kept either.
            self.entries = Vec::new();
        }
        Some(entry)
    }

    pub fn remove(&mut self, topic: &str) -> Option<V> {
        self.remove_entry(topic).map(|(_, v)| v)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Box<str>, &V)> {
        self.entries.iter().map(|(t, v)| (t, v))
    }

    pub fn keys(&self) -> impl Iterator<Item = &Box<str>> {
        self.entries.iter().map(|(t, _)| t)
    }

    /// Takes every entry out.
    pub fn drain(&mut self) -> impl Iterator<Item = (Box<str>, V)> {
        std::mem::take(&mut self.entries).into_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::Joined;

    #[test]
    fn behaves_as_a_map() {
        let mut m = Joined::default();
        assert_eq!(m.insert("b".into(), 2), None);
        assert_eq!(m.entries.capacity(), 1, "one channel: room for one");
        assert_eq!(m.insert("a".into(), 1), None);
        assert_eq!(m.insert("c".into(), 3), None);
        assert_eq!(m.insert("b".into(), 20), Some(2));
        assert_eq!(m.len(), 3);
        assert_eq!(m.get("b"), Some(&20));
        assert!(m.contains_key("a") && !m.contains_key("d"));
        *m.get_mut("c").unwrap() += 1;
        assert_eq!(m.get("c"), Some(&4));
        let keys: Vec<&str> = m.keys().map(|k| &**k).collect();
        assert_eq!(keys, ["a", "b", "c"]);
        assert_eq!(m.remove_entry("a"), Some(("a".into(), 1)));
        assert_eq!(m.remove("a"), None);
        assert_eq!(m.remove("b"), Some(20));
        let rest: Vec<(Box<str>, i32)> = m.drain().collect();
        assert_eq!(rest, [("c".into(), 4)]);
        assert_eq!(m.len(), 0);
        assert_eq!(m.get("c"), None);
    }

    #[test]
    fn emptied_keeps_no_room() {
        let mut m = Joined::default();
        for i in 0..10 {
            m.insert(format!("t{i}").into(), i);
        }
        for i in 0..10 {
            assert_eq!(m.remove(&format!("t{i}")), Some(i));
        }
        assert_eq!(m.entries.capacity(), 0);
    }
}
