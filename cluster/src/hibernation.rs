//! Hibernation: a group with nothing to do stops its clock, so that idle partitions cost
//! neither CPU nor network.
//!
//! A Raft group that is awake ticks every `tick` and its leader heartbeats every follower
//! every `heartbeat_ticks`, each heartbeat answered: with 1,000 idle partitions that was
//! 20,000 messages a second between three nodes and a fifth of a core (BENCHMARKS.md,
//! "Idle cost"). A hibernating group sends nothing and its ticks are skipped; the node's
//! liveness (`node.rs`: connections and keep-alive frames between nodes) stands in for
//! the heartbeats while it sleeps.
//!
//! **Falling asleep** is agreed, leader first:
//! 1. A leader is *quiet* when its log is committed, applied and on every voter (each
//!    follower's match index is the last index, replicating), with nothing proposed,
//!    pending or being sent. Quiet for `election_ticks` in a row (no new entry, no
//!    new term), it asks every follower to sleep ([`Signal::Ask`] with its term and last
//!    index), again every `heartbeat_ticks` until each agreed.
//! 2. A follower agrees only if it follows that leader in that term and holds, has
//!    committed and has applied exactly that log: it then stops ticking and answers
//!    [`Signal::Agree`]. Its heartbeats having carried the commit index, this is the
//!    common case one heartbeat after the leader went quiet.
//! 3. The leader sleeps once every other voter agreed to its current term and index.
//!
//! Until then the leader keeps heartbeating, and a heartbeat wakes a follower that fell
//! asleep, which then agrees again: the protocol only ever leaves a group awake, never a
//! follower asleep under a leader that is not.
//!
//! **Waking** (any of these):
//! - any Raft message stepped into the replica (a proposal's appends wake the followers,
//!   a vote request wakes whoever receives it);
//! - a proposal at the leader;
//! - the node hears that a voter's process restarted or its connections closed, or that it
//!   has been silent for an election timeout (`node.rs`): a leader wakes for any voter
//!   (its in-sync set and quorum check must see it), a follower for its leader (it then
//!   forgets that leader and elects, as an awake one does);
//! - [`Signal::Wake`]: a follower woken by anything but its leader's message wakes the
//!   leader, so that heartbeats resume before the follower's election timeout runs out;
//!   a node whose replica stopped (a failed write) wakes its peers, who then elect.
//!
//! Sleeping changes nothing about what Raft guarantees: it only withholds ticks, and
//! elections and commits never depend on a tick for safety, only for progress. What keeps
//! progress is that every event that needs a tick wakes the group first.

use std::collections::BTreeSet;

/// What replicas of one group say to each other about sleeping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// The leader of `term` is quiet with its log ending, committed, at `index`: the
    /// follower may sleep.
    Ask { term: u64, index: u64 },
    /// The follower holds, committed and applied, the log to `index` under the leader of
    /// `term`, and sleeps.
    Agree { term: u64, index: u64 },
    /// The sender is awake in `term` and needs the receiver awake.
    Wake { term: u64 },
}

/// Where a replica is in falling asleep and waking up (the replica decides what is quiet;
/// this keeps the count and the signals to send).
#[derive(Debug)]
pub(crate) struct Hibernation {
    enabled: bool,
    asleep: bool,
    /// Ticks the leader has been quiet at `quiet_at`.
    quiet_ticks: usize,
    /// The (term, last index) the leader was quiet at on its last tick.
    quiet_at: Option<(u64, u64)>,
    /// The followers that agreed to sleep at `quiet_at`.
    agreed: BTreeSet<u64>,
    /// Signals to send, by recipient.
    outbox: Vec<(u64, Signal)>,
    quiet_ticks_min: usize,
    ask_every_ticks: usize,
}

impl Hibernation {
    /// A replica that asks to sleep once quiet for `quiet_ticks_min` ticks, again every
    /// `ask_every_ticks`; one not `enabled` never sleeps: it neither asks nor agrees.
    pub(crate) fn new(enabled: bool, quiet_ticks_min: usize, ask_every_ticks: usize) -> Self {
        Hibernation {
            enabled,
            asleep: false,
            quiet_ticks: 0,
            quiet_at: None,
            agreed: BTreeSet::new(),
            outbox: Vec::new(),
            quiet_ticks_min: quiet_ticks_min.max(1),
            ask_every_ticks: ask_every_ticks.max(1),
        }
    }

    pub(crate) fn asleep(&self) -> bool {
        self.asleep
    }

    /// A leader's tick: `quiet` is its (term, last index) if it is quiet now; `followers`
    /// the other voters. Queues the questions due.
    pub(crate) fn leader_tick(&mut self, quiet: Option<(u64, u64)>, followers: &[u64]) {
        if !self.enabled {
            return;
        }
        if quiet != self.quiet_at {
            self.quiet_at = quiet;
            self.quiet_ticks = 0;
            self.agreed.clear();
        }
        let Some((term, index)) = quiet else { return };
        self.quiet_ticks += 1;
        let due = self.quiet_ticks >= self.quiet_ticks_min
            && (self.quiet_ticks - self.quiet_ticks_min) % self.ask_every_ticks == 0;
        if !due {
            return;
        }
        for &follower in followers {
            if !self.agreed.contains(&follower) {
                self.outbox.push((follower, Signal::Ask { term, index }));
            }
        }
    }

    /// A follower's agreement reached the leader, quiet at `quiet` now: whether the whole
    /// group now sleeps (the leader with it).
    pub(crate) fn agreed(
        &mut self,
        from: u64,
        term: u64,
        index: u64,
        quiet: Option<(u64, u64)>,
        followers: &[u64],
    ) -> bool {
        if !self.enabled || quiet != Some((term, index)) || self.quiet_at != quiet {
            return false;
        }
        self.agreed.insert(from);
        if followers
            .iter()
            .all(|follower| self.agreed.contains(follower))
        {
            self.asleep = true;
        }
        self.asleep
    }

    /// A follower agrees to sleep under `leader` at `(term, index)`, if enabled.
    pub(crate) fn agree(&mut self, leader: u64, term: u64, index: u64) {
        if self.enabled {
            self.asleep = true;
            self.outbox.push((leader, Signal::Agree { term, index }));
        }
    }

    /// Wakes the replica; if `tell` names its leader (a follower woken by something else
    /// than that leader), the leader is woken too. Whether it was asleep.
    pub(crate) fn wake(&mut self, tell: Option<(u64, u64)>) -> bool {
        let was = std::mem::replace(&mut self.asleep, false);
        self.quiet_ticks = 0;
        self.quiet_at = None;
        self.agreed.clear();
        if let (true, Some((leader, term))) = (was, tell) {
            self.outbox.push((leader, Signal::Wake { term }));
        }
        was
    }

    /// The signals to send now, by recipient.
    pub(crate) fn take_outbox(&mut self) -> Vec<(u64, Signal)> {
        std::mem::take(&mut self.outbox)
    }
}

#[cfg(test)]
mod tests {
    use super::{Hibernation, Signal};

    #[test]
    fn a_quiet_leader_asks_after_the_minimum_then_at_every_interval_until_all_agree() {
        let mut state = Hibernation::new(true, 3, 2);
        let quiet = Some((5, 40));
        state.leader_tick(quiet, &[2, 3]);
        state.leader_tick(quiet, &[2, 3]);
        assert!(state.take_outbox().is_empty(), "not quiet long enough");
        state.leader_tick(quiet, &[2, 3]);
        let ask = Signal::Ask { term: 5, index: 40 };
        assert_eq!(state.take_outbox(), [(2, ask), (3, ask)]);
        assert!(!state.agreed(2, 5, 40, quiet, &[2, 3]), "3 has not agreed");
        state.leader_tick(quiet, &[2, 3]);
        assert!(state.take_outbox().is_empty(), "between intervals");
        state.leader_tick(quiet, &[2, 3]);
        assert_eq!(state.take_outbox(), [(3, ask)], "only who has not agreed");
        assert!(state.agreed(3, 5, 40, quiet, &[2, 3]));
        assert!(state.asleep());
    }

    #[test]
    fn an_agreement_to_an_older_point_or_after_the_log_moved_does_not_count() {
        let mut state = Hibernation::new(true, 1, 1);
        state.leader_tick(Some((5, 40)), &[2]);
        state.leader_tick(Some((5, 41)), &[2]);
        assert!(
            !state.agreed(2, 5, 40, Some((5, 41)), &[2]),
            "agreed to a log that has grown since"
        );
        assert!(!state.agreed(2, 5, 41, None, &[2]), "not quiet any more");
        assert!(!state.asleep());
        state.leader_tick(Some((5, 41)), &[2]);
        assert!(state.agreed(2, 5, 41, Some((5, 41)), &[2]));
    }

    #[test]
    fn a_leader_that_is_not_quiet_forgets_the_agreements_it_had() {
        let mut state = Hibernation::new(true, 1, 1);
        state.leader_tick(Some((5, 40)), &[2, 3]);
        assert!(!state.agreed(2, 5, 40, Some((5, 40)), &[2, 3]));
        state.leader_tick(None, &[2, 3]);
        state.leader_tick(Some((5, 40)), &[2, 3]);
        state.take_outbox();
        assert!(
            !state.agreed(3, 5, 40, Some((5, 40)), &[2, 3]),
            "2 agreed before"
        );
    }

    #[test]
    fn a_follower_woken_by_another_than_its_leader_wakes_the_leader_once() {
        let mut state = Hibernation::new(true, 1, 1);
        state.agree(1, 5, 40);
        assert_eq!(
            state.take_outbox(),
            [(1, Signal::Agree { term: 5, index: 40 })]
        );
        assert!(state.wake(Some((1, 5))));
        assert_eq!(state.take_outbox(), [(1, Signal::Wake { term: 5 })]);
        assert!(!state.wake(Some((1, 5))), "already awake");
        assert!(state.take_outbox().is_empty());
    }

    #[test]
    fn a_replica_with_hibernation_off_never_asks_agrees_nor_sleeps() {
        let mut state = Hibernation::new(false, 1, 1);
        for _ in 0..10 {
            state.leader_tick(Some((5, 40)), &[2]);
        }
        assert!(state.take_outbox().is_empty());
        assert!(!state.agreed(2, 5, 40, Some((5, 40)), &[2]));
        state.agree(1, 5, 40);
        assert!(state.take_outbox().is_empty(), "nor agrees as a follower");
        assert!(!state.asleep());
    }
}
