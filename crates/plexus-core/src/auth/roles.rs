//! A token's roles, interned: every connection whose token names the same roles (in the same
//! order) shares one immutable list.
//!
//! Roles are few and repeat across users (`["user"]`, `["user", "admin"]`), but each
//! connection kept its own `Vec<String>`: a list and a heap block per role, ~130 bytes per
//! idle connection with two roles (BENCHMARKS.md, "Memory per idle connection"). Here a list
//! is one `Arc<[Box<str>]>`; the first [`MAX_INTERNED`] distinct lists seen by the process are
//! kept in a table and handed out again, later ones are allocated per identity as before
//! (still one block), so tokens with ever new role lists cannot grow the table past its
//! bound. A table entry lives as long as the process (at most [`MAX_INTERNED`] lists).

use parking_lot::Mutex;
use std::collections::HashSet;
use std::sync::{Arc, LazyLock};

/// Distinct role lists the process shares at most; each further list is allocated per
/// identity.
pub const MAX_INTERNED: usize = 1024;

/// Roles longer than this (bytes, summed) are never interned: the table holds short lists.
const MAX_INTERNED_BYTES: usize = 512;

/// The table of shared lists.
struct Interner {
    table: Mutex<HashSet<Arc<[Box<str>]>>>,
    max: usize,
}

impl Interner {
    fn new(max: usize) -> Self {
        let mut table = HashSet::new();
        table.insert(Arc::from(Vec::<Box<str>>::new()));
        Interner {
            table: Mutex::new(table),
            max,
        }
    }

    /// The shared list equal to `list`, added while the table has room.
    fn intern(&self, list: Vec<Box<str>>) -> Arc<[Box<str>]> {
        let bytes: usize = list.iter().map(|r| r.len()).sum();
        if bytes > MAX_INTERNED_BYTES {
            return list.into();
        }
        let mut table = self.table.lock();
        if let Some(shared) = table.get(&list[..]) {
            return shared.clone();
        }
        let list: Arc<[Box<str>]> = list.into();
        if table.len() < self.max {
            table.insert(list.clone());
        }
        list
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.table.lock().len()
    }
}

static TABLE: LazyLock<Interner> = LazyLock::new(|| Interner::new(MAX_INTERNED));

/// An identity's roles: an immutable list shared between identities with the same roles.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Roles(Arc<[Box<str>]>);

impl Roles {
    /// The roles `names`, shared with every other identity of the same roles while the table
    /// has room.
    pub fn new<'a>(names: impl IntoIterator<Item = &'a str>) -> Self {
        Roles(TABLE.intern(names.into_iter().map(Box::from).collect()))
    }

    /// No roles (shared, allocates nothing).
    pub fn none() -> Self {
        Roles::new([])
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|r| &**r)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, role: &str) -> bool {
        self.iter().any(|r| r == role)
    }

    /// Whether two identities share one list (tests: interning works).
    pub fn shares_with(&self, other: &Roles) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Default for Roles {
    fn default() -> Self {
        Roles::none()
    }
}

impl std::fmt::Debug for Roles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<S: AsRef<str>> From<Vec<S>> for Roles {
    fn from(v: Vec<S>) -> Self {
        Roles::new(v.iter().map(AsRef::as_ref))
    }
}

impl<S: AsRef<str>> PartialEq<Vec<S>> for Roles {
    fn eq(&self, other: &Vec<S>) -> bool {
        self.len() == other.len() && self.iter().zip(other).all(|(a, b)| a == b.as_ref())
    }
}

impl serde::Serialize for Roles {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_roles_share_one_list() {
        let a = Roles::new(["user", "admin"]);
        let b = Roles::from(vec!["user".to_owned(), "admin".to_owned()]);
        assert!(a.shares_with(&b));
        assert_eq!(a, b);
        assert_eq!(a, vec!["user", "admin"]);
        // Order is part of the list (the hook cache hashes it in order).
        let c = Roles::new(["admin", "user"]);
        assert!(!a.shares_with(&c));
        assert_ne!(a, c);
        assert!(Roles::none().shares_with(&Roles::default()));
        assert!(a.contains("admin") && !a.contains("adm"));
        assert_eq!(serde_json::to_string(&a).unwrap(), r#"["user","admin"]"#);
        assert_eq!(format!("{a:?}"), r#"["user", "admin"]"#);
    }

    #[test]
    fn the_table_is_bounded() {
        // A table of its own: the process-wide one stays as the other tests expect it.
        let t = Interner::new(4);
        let list = |i: usize| vec![Box::<str>::from(format!("bounded-{i}"))];
        for i in 0..10 {
            let r = t.intern(list(i));
            assert_eq!(&*r[0], format!("bounded-{i}"));
        }
        assert_eq!(t.len(), 4);
        // Those kept are shared, later ones are not.
        assert!(Arc::ptr_eq(&t.intern(list(1)), &t.intern(list(1))));
        assert!(!Arc::ptr_eq(&t.intern(list(7)), &t.intern(list(7))));
        let long = vec![Box::<str>::from("r".repeat(MAX_INTERNED_BYTES + 1))];
        assert!(!Arc::ptr_eq(&t.intern(long.clone()), &t.intern(long)));
        assert!(TABLE.len() <= MAX_INTERNED);
    }
}
