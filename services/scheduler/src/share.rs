//! How replicas share the rollouts: a view of the leases bucket (who is alive, who holds what)
//! kept from a watch, and the arithmetic of each replica's fair share.
//!
//! Every replica counts the live replica leases and the rollouts that need a driver, and drives
//! at most `ceil(rollouts / replicas)` of them. A replica under its share takes free or orphaned
//! rollouts (held by nobody, or by a replica whose lease is gone, expired or of another epoch);
//! a replica over it — because another replica joined — hands the surplus over a bounded number
//! per scan, so a join moves rollouts at a steady rate instead of all at once. The view only
//! chooses what to try: taking a lease is still decided by CAS in [`crate::lease`].

use std::collections::HashMap;
use std::sync::Arc;

use crate::lease::{LeaseValue, REPLICA_PREFIX};

/// Rollouts one replica hands over per scan when it holds more than its share. A scan runs every
/// third of a lease period (5 s by default), so this moves up to 300 rollouts a second from each
/// replica over its share: a replica joining three that hold 10 000 each has its share within
/// about half a minute, while each handover (a lease release, then a take: a few KV writes) stays
/// a small fraction of the steps the replicas are running at the same time.
pub const HANDOVER_PER_SCAN: usize = 500;

/// The replica and rollout leases as last seen in the leases bucket.
#[derive(Debug, Default)]
pub struct View {
    /// Live-or-not replica leases by replica id: `(expires_at_ms, epoch)`.
    replicas: HashMap<String, (u64, u64)>,
    /// Held rollout leases by key: `(owner, epoch, expires_at_ms)`. Released ones are absent.
    holders: HashMap<String, (Arc<str>, u64, u64)>,
    /// Every owner name seen, once: thousands of leases name the same few replicas.
    names: Vec<Arc<str>>,
}

/// What a lease change means to the scan loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// A rollout lease or a replica lease went away: rollouts may be free now.
    Freed,
    /// Anything else (a lease taken or renewed).
    Other,
}

impl View {
    /// Folds in the latest value of the lease at `key` (`None`: deleted or purged).
    pub fn apply(&mut self, key: &str, value: Option<LeaseValue>) -> Change {
        if let Some(replica) = key.strip_prefix(REPLICA_PREFIX) {
            return match value {
                Some(lease) if !lease.owner.is_empty() => {
                    self.replicas
                        .insert(replica.to_owned(), (lease.expires_at_ms, lease.epoch));
                    Change::Other
                }
                _ => {
                    self.replicas.remove(replica);
                    Change::Freed
                }
            };
        }
        match value {
            Some(lease) if !lease.owner.is_empty() => {
                let owner = self.intern(&lease.owner);
                self.holders
                    .insert(key.to_owned(), (owner, lease.epoch, lease.expires_at_ms));
                Change::Other
            }
            _ => {
                self.holders.remove(key);
                Change::Freed
            }
        }
    }

    fn intern(&mut self, owner: &str) -> Arc<str> {
        if let Some(name) = self.names.iter().find(|n| ***n == *owner) {
            return name.clone();
        }
        let name: Arc<str> = Arc::from(owner);
        self.names.push(name.clone());
        name
    }

    /// Replicas whose lease is unexpired at `now_ms`, counting `me` even before its own lease
    /// shows up in the watch.
    pub fn live(&self, me: &str, now_ms: u64) -> usize {
        let others = self
            .replicas
            .iter()
            .filter(|(id, (expires, _))| id.as_str() != me && *expires > now_ms)
            .count();
        others + 1
    }

    /// When the next of the other replicas' leases expires after `now_ms`, if any is live: its
    /// rollouts are free from then on, so a scan is due then rather than a scan period later.
    pub fn next_expiry(&self, me: &str, now_ms: u64) -> Option<u64> {
        self.replicas
            .iter()
            .filter(|(id, (expires, _))| id.as_str() != me && *expires > now_ms)
            .map(|(_, (expires, _))| *expires)
            .min()
    }

    /// Whether another live replica holds the rollout lease at `key`: then it is not worth a
    /// try. A lease of `me` (of an earlier epoch, or being released) counts as free.
    pub fn held_elsewhere(&self, key: &str, me: &str, now_ms: u64) -> bool {
        let Some((owner, epoch, expires)) = self.holders.get(key) else {
            return false;
        };
        if **owner == *me {
            return false;
        }
        if *epoch == 0 {
            // A per-rollout lease written by an older scheduler: its own expiry.
            return *expires > now_ms;
        }
        self.replicas
            .get(&**owner)
            .is_some_and(|(expires, live)| *expires > now_ms && live == epoch)
    }
}

/// The most rollouts one of `replicas` live replicas should drive out of `rollouts`: the ceiling
/// of the even split, so the shares always cover every rollout.
pub fn fair_share(rollouts: usize, replicas: usize) -> usize {
    rollouts.div_ceil(replicas.max(1))
}

/// How many rollouts a replica driving `owned` of them hands over in one scan.
pub fn to_hand_over(owned: usize, share: usize) -> usize {
    owned.saturating_sub(share).min(HANDOVER_PER_SCAN)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(owner: &str, epoch: u64, expires_at_ms: u64) -> Option<LeaseValue> {
        Some(LeaseValue {
            owner: owner.into(),
            expires_at_ms,
            epoch,
        })
    }

    #[test]
    fn shares_cover_every_rollout_and_differ_by_at_most_one() {
        for rollouts in [0, 1, 2, 29_999, 30_000, 30_001] {
            for replicas in 1..=5 {
                let share = fair_share(rollouts, replicas);
                assert!(share * replicas >= rollouts);
                assert!(share * replicas < rollouts + replicas);
            }
        }
        assert_eq!(fair_share(30_000, 3), 10_000);
        assert_eq!(fair_share(30_000, 2), 15_000);
        assert_eq!(fair_share(7, 0), 7);
    }

    #[test]
    fn surplus_is_handed_over_in_bounded_batches() {
        assert_eq!(to_hand_over(30_000, 10_000), HANDOVER_PER_SCAN);
        assert_eq!(to_hand_over(10_100, 10_000), 100);
        assert_eq!(to_hand_over(10_000, 10_000), 0);
        assert_eq!(to_hand_over(5, 10_000), 0);
    }

    #[test]
    fn live_replicas_are_the_unexpired_leases_and_me() {
        let mut view = View::default();
        assert_eq!(view.live("a", 1_000), 1);
        view.apply("_replica.a", lease("a", 1, 2_000));
        view.apply("_replica.b", lease("b", 2, 2_000));
        view.apply("_replica.c", lease("c", 3, 900));
        assert_eq!(view.live("a", 1_000), 2, "c expired");
        assert_eq!(view.live("a", 2_000), 1, "all expired but me");
        assert_eq!(view.next_expiry("a", 1_000), Some(2_000), "b's");
        assert_eq!(view.next_expiry("a", 2_000), None);
        assert_eq!(view.apply("_replica.b", None), Change::Freed);
        assert_eq!(view.live("a", 1_000), 1);
    }

    #[test]
    fn a_lease_is_held_elsewhere_only_under_a_live_epoch_of_another_replica() {
        let mut view = View::default();
        view.apply("_replica.b", lease("b", 7, 2_000));
        view.apply("ns.x", lease("b", 7, 0));
        view.apply("ns.y", lease("b", 6, 0));
        view.apply("ns.z", lease("a", 1, 0));
        view.apply("ns.old", lease("c", 0, 1_500));
        assert!(view.held_elsewhere("ns.x", "a", 1_000));
        assert!(!view.held_elsewhere("ns.x", "a", 2_000), "b expired");
        assert!(
            !view.held_elsewhere("ns.y", "a", 1_000),
            "an earlier epoch of b"
        );
        assert!(!view.held_elsewhere("ns.z", "a", 1_000), "mine");
        assert!(!view.held_elsewhere("ns.free", "a", 1_000), "never taken");
        assert!(view.held_elsewhere("ns.old", "a", 1_000));
        assert!(!view.held_elsewhere("ns.old", "a", 1_500));
        assert_eq!(view.apply("ns.x", lease("", 0, 0)), Change::Freed);
        assert!(!view.held_elsewhere("ns.x", "a", 1_000), "released");
    }

    #[test]
    fn holders_share_one_owner_string() {
        let mut view = View::default();
        view.apply("ns.x", lease("b", 7, 0));
        view.apply("ns.y", lease("b", 7, 0));
        let (x, y) = (&view.holders["ns.x"].0, &view.holders["ns.y"].0);
        assert!(Arc::ptr_eq(x, y));
    }
}
