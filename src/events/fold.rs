//! Latest state per key, minus truncates: how every reader of the event log
//! folds a run of changes into what it writes (the projector's apply batch,
//! the ProStore feed's delta, the RDM client's batch).
//!
//! The rules, by journal position `(commit_lsn, lsn)`:
//! - of the changes to one key, the one at the highest position wins (a
//!   re-read change, at the same position, replaces itself);
//! - a TRUNCATE of an entity drops every change of it below its position,
//!   those already folded and those that arrive later (the log interleaves
//!   partitions, so an older change can be read after the truncate);
//! - a fold may start above earlier truncates (its `floor`): the ProStore
//!   feed carries them from delta to delta.
//!
//! What the truncate means for rows held outside the fold (the showcase's,
//! the service's) is the reader's to apply: [`Fold::truncates`] gives each
//! entity's latest truncate with the reader's payload.

use std::borrow::Borrow;
use std::collections::hash_map::Entry;
use std::collections::{btree_map, BTreeMap, HashMap};
use std::hash::Hash;

/// A journal position: (commit LSN, LSN).
pub type Position = (u64, u64);

/// A fold of changes: entity `E`, key `K`, the change `T`, and `U` carried
/// with a truncate (its event, its time, or nothing).
#[derive(Debug, Clone)]
pub struct Fold<E, K, T, U = ()> {
    rows: HashMap<E, BTreeMap<K, (Position, T)>>,
    truncates: HashMap<E, (Position, U)>,
    floor: BTreeMap<String, Position>,
    dropped: u64,
}

impl<E: Eq + Hash + Borrow<str>, K: Ord, T, U> Default for Fold<E, K, T, U> {
    fn default() -> Self {
        Fold::above(BTreeMap::new())
    }
}

impl<E: Eq + Hash + Borrow<str>, K: Ord, T, U> Fold<E, K, T, U> {
    /// A fold that starts above earlier truncates: per entity name, the
    /// position below which its changes no longer count.
    pub fn above(floor: BTreeMap<String, Position>) -> Self {
        Fold {
            rows: HashMap::new(),
            truncates: HashMap::new(),
            floor,
            dropped: 0,
        }
    }

    /// A TRUNCATE of `entity` at `at`.
    pub fn truncate(&mut self, entity: E, at: Position, payload: U) {
        if let Some(rows) = self.rows.get_mut(entity.borrow()) {
            let before = rows.len();
            rows.retain(|_, (p, _)| *p >= at);
            self.dropped += (before - rows.len()) as u64;
        }
        match self.floor.get_mut(entity.borrow()) {
            Some(f) => *f = (*f).max(at),
            None => {
                self.floor.insert(entity.borrow().to_string(), at);
            }
        }
        match self.truncates.entry(entity) {
            Entry::Vacant(v) => {
                v.insert((at, payload));
            }
            Entry::Occupied(mut o) => {
                if at >= o.get().0 {
                    o.insert((at, payload));
                }
            }
        }
    }

    /// A change of `key` at `at`. False when it does not count: below a
    /// truncate of its entity, or below the key's change already folded.
    pub fn put(&mut self, entity: E, key: K, at: Position, change: T) -> bool {
        if self.floor.get(entity.borrow()).is_some_and(|f| at < *f) {
            self.dropped += 1;
            return false;
        }
        match self.rows.entry(entity).or_default().entry(key) {
            btree_map::Entry::Vacant(v) => {
                v.insert((at, change));
                true
            }
            btree_map::Entry::Occupied(mut o) => {
                self.dropped += 1;
                if at >= o.get().0 {
                    o.insert((at, change));
                    true
                } else {
                    false
                }
            }
        }
    }

    /// The latest change of each key of `entity`, by key.
    pub fn rows(&self, entity: &str) -> Option<&BTreeMap<K, (Position, T)>> {
        self.rows.get(entity).filter(|r| !r.is_empty())
    }

    /// Every entity with changes, with them by key.
    pub fn entities(&self) -> impl Iterator<Item = (&E, &BTreeMap<K, (Position, T)>)> {
        self.rows.iter().filter(|(_, r)| !r.is_empty())
    }

    /// Each entity's latest truncate read in this fold.
    pub fn truncates(&self) -> &HashMap<E, (Position, U)> {
        &self.truncates
    }

    /// Per entity name, the latest truncate so far, earlier folds' included.
    pub fn floor(&self) -> &BTreeMap<String, Position> {
        &self.floor
    }

    /// Changes that did not count: superseded, or below a truncate.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type F = Fold<&'static str, &'static str, u32, u32>;

    #[test]
    fn the_highest_position_of_a_key_wins_in_any_order() {
        let mut f = F::default();
        assert!(f.put("grade", "a", (2, 2), 20));
        assert!(!f.put("grade", "a", (1, 1), 10));
        assert!(f.put("grade", "a", (3, 1), 30));
        assert_eq!(f.rows("grade").unwrap()["a"], ((3, 1), 30));
        assert_eq!(f.dropped(), 2);
    }

    #[test]
    fn a_truncate_drops_older_changes_read_before_and_after_it() {
        let mut f = F::default();
        f.put("grade", "a", (1, 1), 1);
        f.put("grade", "b", (5, 1), 5);
        f.put("mark", "a", (1, 1), 1);
        f.truncate("grade", (3, 1), 7);
        assert!(!f.put("grade", "c", (2, 1), 2), "older than the truncate");
        assert!(f.put("grade", "d", (4, 1), 4));
        let keys: Vec<_> = f.rows("grade").unwrap().keys().copied().collect();
        assert_eq!(keys, ["b", "d"]);
        assert!(f.rows("mark").is_some(), "another entity is untouched");
        f.truncate("grade", (2, 1), 8);
        assert_eq!(
            f.truncates()["grade"],
            ((3, 1), 7),
            "the latest truncate stays"
        );
        assert_eq!(f.floor()["grade"], (3, 1));
    }

    #[test]
    fn a_fold_above_an_earlier_truncate_ignores_what_it_dropped() {
        let mut f = F::above(BTreeMap::from([("grade".to_string(), (3, 0))]));
        assert!(!f.put("grade", "a", (2, 9), 1));
        assert!(f.put("grade", "a", (3, 0), 2));
        assert!(f.truncates().is_empty());
    }
}
