//! Rejoining a group with no memory of it: what a replica does before it may vote again
//! when its node lost its data directory (or never had one).
//!
//! Raft's safety rests on every voter keeping its promises across crashes: the term it
//! reached, the vote it cast in it, and the entries it acknowledged. A node whose data
//! directory was wiped has forgotten all three and, left to raft-rs as it stands, would
//! break them: with an empty log any candidate looks up to date to it, so it would help
//! elect one that lacks entries its former self acknowledged into a commit (those
//! entries then exist on fewer nodes than a majority, and the new leader overwrites
//! them); and it could vote a second time in a term it already voted in.
//!
//! Such a replica therefore rejoins in two steps before it acts as a voter again:
//!
//! 1. **Asking.** It takes no part at all (every Raft message to it is dropped, it never
//!    campaigns) and asks every other voter of its group for its term and the last entry
//!    of its log. Only once *all* of them answered does it go on: together they know
//!    every term the lost self voted in with effect (a winner of a term is one of them and
//!    knows its term) and, being a majority, hold every committed entry. It adopts the
//!    highest term with a vote for itself (so it never grants a second vote in a term its
//!    former self may have voted in), and takes the most up-to-date last entry among the
//!    answers as its **floor**.
//! 2. **Catching up.** It follows a leader as any follower does (appends, snapshots and
//!    fills), acknowledging only what it truly holds, but grants no vote, pre-vote or
//!    leadership transfer until its own log is at least as up to date as the floor. From
//!    then on Raft's own up-to-date check covers it: it votes only for a candidate holding
//!    everything it holds, which includes every entry committed before it was wiped.
//!
//! Waiting for every other voter, not a majority, is what makes step 1 sound without
//! timing assumptions: a candidate that collected the lost self's vote may still be
//! collecting others, and only it knows its term. The cost is availability: a wiped node
//! rejoins only while all the other voters of its groups are up (with three nodes, those
//! are the two a majority needs anyway to hold what the wiped one lost).
//!
//! This is the rule of Raft's dissertation (a server that loses its storage rejoins as a
//! new member) shaped for static membership, and the reason KIP-853 ties a voter to its
//! directory's id.

use std::collections::BTreeMap;

/// What a peer told a rejoining replica: its term and the last entry of its log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogState {
    pub term: u64,
    pub last_index: u64,
    pub last_term: u64,
}

impl LogState {
    /// Raft's order of logs: by the last entry's term, then its index.
    fn last_entry(&self) -> (u64, u64) {
        (self.last_term, self.last_index)
    }
}

/// Where a rejoining replica is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejoin {
    /// Waiting for every other voter's answer; `ticks` since the last round of asking.
    Asking {
        answers: BTreeMap<u64, LogState>,
        ticks: usize,
    },
    /// Following, with votes withheld until the log's last entry (term, index) reaches
    /// the floor.
    CatchingUp { floor_term: u64, floor_index: u64 },
}

/// What the replica does on an answer that completes the asking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Adopted {
    /// The highest term any other voter is in: the replica moves to it (if it is behind)
    /// with a vote for itself.
    pub term: u64,
    pub floor_term: u64,
    pub floor_index: u64,
}

impl Default for Rejoin {
    /// A replica that starts rejoining: asking.
    fn default() -> Rejoin {
        Rejoin::Asking {
            answers: BTreeMap::new(),
            ticks: 0,
        }
    }
}

impl Rejoin {
    /// Whether Raft messages are taken at all (not while asking).
    pub fn takes_messages(&self) -> bool {
        matches!(self, Rejoin::CatchingUp { .. })
    }

    /// On a tick: the voters to ask now, every `every` ticks (the first tick asks), those
    /// that have not answered yet. `others` are the group's voters but this one.
    pub fn due(&mut self, others: &[u64], every: usize) -> Vec<u64> {
        let Rejoin::Asking { answers, ticks } = self else {
            return Vec::new();
        };
        let due = *ticks == 0;
        *ticks = (*ticks + 1) % every.max(1);
        if !due {
            return Vec::new();
        }
        others
            .iter()
            .copied()
            .filter(|peer| !answers.contains_key(peer))
            .collect()
    }

    /// Takes `from`'s answer. Once every one of `others` answered, the replica moves on to
    /// catching up: the answer says what it adopts. An answer while catching up, or from a
    /// node that is not another voter, changes nothing.
    pub fn answer(&mut self, from: u64, state: LogState, others: &[u64]) -> Option<Adopted> {
        let Rejoin::Asking { answers, .. } = self else {
            return None;
        };
        if !others.contains(&from) {
            return None;
        }
        answers.insert(from, state);
        if !others.iter().all(|peer| answers.contains_key(peer)) {
            return None;
        }
        let term = answers.values().map(|state| state.term).max().unwrap_or(0);
        let (floor_term, floor_index) = answers
            .values()
            .map(LogState::last_entry)
            .max()
            .unwrap_or((0, 0));
        *self = Rejoin::CatchingUp {
            floor_term,
            floor_index,
        };
        Some(Adopted {
            term,
            floor_term,
            floor_index,
        })
    }

    /// Whether a log whose last entry is `(last_term, last_index)` has reached the floor:
    /// the rejoin is over.
    pub fn reached(&self, last_term: u64, last_index: u64) -> bool {
        match self {
            Rejoin::Asking { .. } => false,
            Rejoin::CatchingUp {
                floor_term,
                floor_index,
            } => (last_term, last_index) >= (*floor_term, *floor_index),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(term: u64, last_term: u64, last_index: u64) -> LogState {
        LogState {
            term,
            last_index,
            last_term,
        }
    }

    #[test]
    fn asks_until_every_other_voter_answered_then_adopts_the_highest_term_and_log() {
        let others = [2, 3];
        let mut rejoin = Rejoin::default();
        assert!(!rejoin.takes_messages());
        assert_eq!(rejoin.due(&others, 3), vec![2, 3], "the first tick asks");
        assert!(rejoin.due(&others, 3).is_empty());
        assert!(rejoin.due(&others, 3).is_empty());
        // An answer from a node outside the group is no answer.
        assert_eq!(rejoin.answer(9, state(50, 50, 500), &others), None);
        assert_eq!(rejoin.answer(3, state(7, 6, 40), &others), None);
        assert_eq!(
            rejoin.due(&others, 3),
            vec![2],
            "only the silent voter again"
        );
        assert!(!rejoin.reached(u64::MAX, u64::MAX), "no floor while asking");
        // Node 2 is in a later term with a shorter log of a later last term: the term is
        // the highest, the floor the most up-to-date log (term first, then index).
        let adopted = rejoin.answer(2, state(9, 7, 12), &others).unwrap();
        assert_eq!(
            adopted,
            Adopted {
                term: 9,
                floor_term: 7,
                floor_index: 12
            }
        );
        assert!(rejoin.takes_messages());
        assert!(rejoin.due(&others, 3).is_empty(), "no asking once answered");
        assert_eq!(rejoin.answer(3, state(99, 99, 99), &others), None);
        assert!(
            !rejoin.reached(6, 40),
            "a longer log of an older term is behind"
        );
        assert!(!rejoin.reached(7, 11));
        assert!(rejoin.reached(7, 12));
        assert!(rejoin.reached(8, 1));
    }

    #[test]
    fn a_group_new_everywhere_is_rejoined_at_once() {
        let others = [1, 3];
        let mut rejoin = Rejoin::default();
        assert_eq!(rejoin.answer(1, LogState::default(), &others), None);
        let adopted = rejoin.answer(3, LogState::default(), &others).unwrap();
        assert_eq!(adopted.term, 0);
        assert!(rejoin.reached(0, 0));
    }
}
