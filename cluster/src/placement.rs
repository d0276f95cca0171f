//! Where each replicated topic's partitions live: every partition's replica set, as the
//! controller's commands placed it (`controller.rs`, `placement`), on every node alike.
//!
//! Every node keeps the whole table, for every topic, hosted here or not: Metadata names a
//! partition's replicas at any node, and a node opens a replica only of the partitions
//! whose set names it. The table is not a file of its own: it is what the controller's
//! log says, so a node rebuilds it at start by reading the commands it applied before
//! (`Cluster::start`), then keeps it as it applies more. A command of version 1 placed
//! nothing; its partitions are on every node of the cluster (an empty set here).
//!
//! A partition being reassigned also has a *target* set (a `reassign` command's): until its
//! group reports that its voters are the target (`reassigned`), the partition is on every
//! node *involved* in the move: those of the set keep their replica, those of the target
//! open one that joins the group, and so do those of any earlier target of the same move (a
//! redirect or a cancellation may come after they became voters: only the group, once it
//! reached the last target, has taken them out). Then the target becomes the set, and the
//! other involved nodes delete the partition's data. Each move has an *epoch*: the count of
//! targets the table has set so far, the same on every node (every node applies the same
//! commands in the same order); a `reassigned` names the epoch it reports on, so a report
//! delayed past a later move of the same partition, even to the same set, changes nothing.
//!
//! Topics are kept by id, not name: a name may be taken again after a deletion, and a
//! creation the node refused (its name collides, say) leaves an entry no topic of the
//! registry has, which nothing finds.

use std::collections::HashMap;

use crate::controller::Change;

/// Every replicated topic's placement, by topic id: per partition, its replica set
/// (empty: every node of the cluster).
#[derive(Debug, Default)]
pub struct Placements {
    topics: HashMap<[u8; 16], Vec<Vec<u64>>>,
    /// The partitions being reassigned, by topic id and partition.
    moves: HashMap<([u8; 16], u32), Move>,
    /// Targets set so far: the last move's epoch.
    epochs: u64,
}

/// A partition's move under way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    pub target: Vec<u64>,
    /// The set's nodes and every target's since the move began.
    pub involved: Vec<u64>,
    pub epoch: u64,
}

impl Move {
    /// Whether a `reassigned` report of `replicas` in `epoch` ends this move: the same
    /// epoch, and its target's nodes in any order.
    pub fn ends(&self, replicas: &[u64], epoch: u64) -> bool {
        self.epoch == epoch && same_set(&self.target, replicas)
    }
}

/// A partition under reassignment, as [`Placements::reassignments`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reassignment {
    pub id: [u8; 16],
    pub partition: u32,
    /// Its replica set until the reassignment is done.
    pub replicas: Vec<u64>,
    pub moving: Move,
}

/// Why a command's placement does not fit the topic as this node has it (the same on every
/// node, since every node applies the same commands in the same order).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("topic {topic}: {count} replica sets for partitions {from}..{to}")]
pub struct Misplaced {
    pub topic: String,
    pub count: usize,
    pub from: u32,
    pub to: u32,
}

impl Placements {
    /// Checks, before the node applies it, that `change` places what it adds: a create
    /// partitions command, built for the count it found, is refused once another raised
    /// the count (its sets would land on the wrong partitions).
    pub fn check(&self, change: &Change) -> Result<(), Misplaced> {
        let Change::CreatePartitions {
            topic,
            partitions,
            replicas: Some(replicas),
        } = change
        else {
            return Ok(());
        };
        let Some(placed) = self.topics.get(&topic.id) else {
            return Ok(());
        };
        let from = u32::try_from(placed.len()).unwrap_or(u32::MAX);
        if from < *partitions && replicas.len() != (*partitions - from) as usize {
            return Err(Misplaced {
                topic: topic.name.clone(),
                count: replicas.len(),
                from,
                to: *partitions,
            });
        }
        Ok(())
    }

    /// Takes in a command's placement if [`Placements::check`] passes, as every node does
    /// when it applies the command and when it replays it at start; a refused command
    /// places nothing. Applying one again changes nothing.
    pub fn apply_checked(&mut self, change: &Change) -> Result<(), Misplaced> {
        self.check(change)?;
        self.apply(change);
        Ok(())
    }

    fn apply(&mut self, change: &Change) {
        match change {
            Change::CreateTopic(create) => {
                self.topics.entry(create.id).or_insert_with(|| {
                    (create.replicas.clone())
                        .unwrap_or_else(|| vec![Vec::new(); create.partitions as usize])
                });
            }
            Change::DeleteTopic(topic) => {
                self.topics.remove(&topic.id);
                self.moves.retain(|(id, _), _| *id != topic.id);
            }
            Change::CreatePartitions {
                topic,
                partitions,
                replicas,
            } => {
                let Some(placed) = self.topics.get_mut(&topic.id) else {
                    return;
                };
                let Some(added) = (*partitions as usize).checked_sub(placed.len()) else {
                    return;
                };
                match replicas {
                    Some(sets) => placed.extend(sets.iter().take(added).cloned()),
                    None => placed.extend(vec![Vec::new(); added]),
                }
            }
            Change::AlterConfig { .. } => {}
            Change::Reassign { topic, targets } => {
                for (partition, target) in targets {
                    self.set_target(&topic.id, *partition, target);
                }
            }
            Change::Reassigned {
                topic,
                partition,
                replicas,
                epoch,
            } => {
                let key = (topic.id, *partition);
                let reported =
                    (self.moves.get(&key)).is_some_and(|moving| moving.ends(replicas, *epoch));
                if let Some(done) = reported.then(|| self.moves.remove(&key)).flatten() {
                    if let Some(set) = (self.topics.get_mut(&topic.id))
                        .and_then(|sets| sets.get_mut(*partition as usize))
                    {
                        *set = done.target;
                    }
                }
            }
        }
    }

    /// Gives a placed partition (of a topic not on every node) a target set, in a new
    /// epoch. The current set as target with no move under way changes nothing; with one
    /// under way, it is the way back (a cancellation). The nodes already involved stay so.
    fn set_target(&mut self, id: &[u8; 16], partition: u32, target: &[u64]) {
        let Some(current) = self.replicas(id, partition) else {
            return;
        };
        let key = (*id, partition);
        if current.is_empty() || (same_set(current, target) && !self.moves.contains_key(&key)) {
            return;
        }
        let mut involved = match self.moves.get(&key) {
            Some(moving) => moving.involved.clone(),
            None => current.to_vec(),
        };
        involved.extend(target.iter().filter(|id| !current.contains(id)));
        involved.sort_unstable();
        involved.dedup();
        self.epochs += 1;
        let moving = Move {
            target: target.to_vec(),
            involved,
            epoch: self.epochs,
        };
        self.moves.insert(key, moving);
    }

    /// The partition's target set, if it is being reassigned.
    pub fn target(&self, id: &[u8; 16], partition: u32) -> Option<&[u64]> {
        self.moving(id, partition)
            .map(|moving| moving.target.as_slice())
    }

    /// The partition's move, if it is being reassigned.
    pub fn moving(&self, id: &[u8; 16], partition: u32) -> Option<&Move> {
        self.moves.get(&(*id, partition))
    }

    /// Every partition under reassignment, by topic id and partition.
    pub fn reassignments(&self) -> Vec<Reassignment> {
        let mut all: Vec<Reassignment> = (self.moves.iter())
            .map(|((id, partition), moving)| Reassignment {
                id: *id,
                partition: *partition,
                replicas: self.replicas(id, *partition).unwrap_or_default().to_vec(),
                moving: moving.clone(),
            })
            .collect();
        all.sort_by_key(|r| (r.id, r.partition));
        all
    }

    /// The partition's replica set (empty: every node), if the table places the topic
    /// and has the partition.
    pub fn replicas(&self, id: &[u8; 16], partition: u32) -> Option<&[u64]> {
        self.topics
            .get(id)?
            .get(partition as usize)
            .map(Vec::as_slice)
    }

    /// The replica count of the topic's first partition (the factor new partitions get),
    /// `None` for a topic on every node or not placed.
    pub fn factor(&self, id: &[u8; 16]) -> Option<usize> {
        let first = self.topics.get(id)?.first()?;
        (!first.is_empty()).then_some(first.len())
    }
}

/// Whether two replica sets hold the same nodes, in any order.
pub fn same_set(a: &[u64], b: &[u64]) -> bool {
    a.len() == b.len() && a.iter().all(|id| b.contains(id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::{CreateTopic, TopicRef};

    fn create(name: &str, id: u8, replicas: Option<Vec<Vec<u64>>>, partitions: u32) -> Change {
        Change::CreateTopic(CreateTopic {
            name: name.to_owned(),
            id: [id; 16],
            partitions,
            pairs: Vec::new(),
            replicas,
        })
    }

    fn topic(name: &str, id: u8) -> TopicRef {
        TopicRef {
            name: name.to_owned(),
            id: [id; 16],
        }
    }

    #[test]
    fn a_create_partitions_built_for_an_older_count_places_nothing() {
        // Two commands built at 2 partitions: 2 -> 3 commits first, so 2 -> 4's sets would
        // land on the wrong partitions; the next, built at 3, is placed as built.
        let commands = [
            create("a", 1, Some(vec![vec![1], vec![2]]), 2),
            Change::CreatePartitions {
                topic: topic("a", 1),
                partitions: 3,
                replicas: Some(vec![vec![3]]),
            },
            Change::CreatePartitions {
                topic: topic("a", 1),
                partitions: 4,
                replicas: Some(vec![vec![1], vec![1]]),
            },
            Change::CreatePartitions {
                topic: topic("a", 1),
                partitions: 5,
                replicas: Some(vec![vec![2], vec![1]]),
            },
        ];
        let mut table = Placements::default();
        let outcomes: Vec<bool> = (commands.iter())
            .map(|change| table.apply_checked(change).is_ok())
            .collect();
        assert_eq!(outcomes, [true, true, false, true]);
        let sets: Vec<_> = (0..5)
            .map(|p| table.replicas(&[1; 16], p).unwrap())
            .collect();
        assert_eq!(sets, [&[1][..], &[2], &[3], &[2], &[1]]);
        // Replaying the same commands (a restart) gives the same table, and applying one
        // again changes nothing.
        let mut replayed = Placements::default();
        for change in commands.iter().chain(&commands) {
            let _ = replayed.apply_checked(change);
        }
        for p in 0..6 {
            assert_eq!(replayed.replicas(&[1; 16], p), table.replicas(&[1; 16], p));
        }
    }

    #[test]
    fn the_table_follows_creations_additions_and_deletions() {
        let mut table = Placements::default();
        table.apply(&create("a", 1, Some(vec![vec![1, 2], vec![2, 3]]), 2));
        table.apply(&create("old", 2, None, 1));
        assert_eq!(table.replicas(&[1; 16], 1), Some(&[2, 3][..]));
        assert_eq!(table.replicas(&[9; 16], 1), None, "another id");
        assert_eq!(table.replicas(&[1; 16], 2), None);
        assert_eq!(table.replicas(&[2; 16], 0), Some(&[][..]), "every node");
        assert_eq!(table.factor(&[1; 16]), Some(2));
        assert_eq!(table.factor(&[2; 16]), None);

        let add = Change::CreatePartitions {
            topic: topic("a", 1),
            partitions: 3,
            replicas: Some(vec![vec![3, 1]]),
        };
        assert_eq!(table.check(&add), Ok(()));
        table.apply(&add);
        assert_eq!(table.replicas(&[1; 16], 2), Some(&[3, 1][..]));
        // The same command again (applied twice after a restart) changes nothing.
        table.apply(&add);
        assert_eq!(table.replicas(&[1; 16], 3), None);

        // Built for 2 partitions, committed after another raised the count to 3.
        let late = Change::CreatePartitions {
            topic: topic("a", 1),
            partitions: 5,
            replicas: Some(vec![vec![1, 2], vec![2, 3], vec![3, 1]]),
        };
        assert!(table.check(&late).is_err());

        // A deletion of an earlier topic of the name leaves this one.
        table.apply(&Change::DeleteTopic(topic("a", 7)));
        assert!(table.replicas(&[1; 16], 0).is_some());
        table.apply(&Change::DeleteTopic(topic("a", 1)));
        assert_eq!(table.replicas(&[1; 16], 0), None);
        // A create of a name another id holds (refused by the registry) leaves the holder.
        table.apply(&create("old", 3, Some(vec![vec![1]]), 1));
        assert_eq!(table.replicas(&[2; 16], 0), Some(&[][..]));
        assert_eq!(table.replicas(&[3; 16], 0), Some(&[1][..]));
    }

    #[test]
    fn a_reassignment_is_a_target_until_its_group_reports_it_done() {
        let mut table = Placements::default();
        table.apply(&create("a", 1, Some(vec![vec![1, 2], vec![2, 3]]), 2));
        table.apply(&create("old", 2, None, 1));
        let reassign = |targets: Vec<(u32, Vec<u64>)>| Change::Reassign {
            topic: topic("a", 1),
            targets,
        };
        let reassigned = |partition, replicas: Vec<u64>, epoch| Change::Reassigned {
            topic: topic("a", 1),
            partition,
            replicas,
            epoch,
        };
        // Its own set as target, or a partition it does not have: nothing to do.
        table.apply(&reassign(vec![(0, vec![2, 1]), (7, vec![1])]));
        assert!(table.reassignments().is_empty());
        table.apply(&reassign(vec![(0, vec![3, 2])]));
        let moving = table.moving(&[1; 16], 0).unwrap().clone();
        assert_eq!(
            (moving.target, moving.involved),
            (vec![3, 2], vec![1, 2, 3])
        );
        assert_eq!(
            table.replicas(&[1; 16], 0),
            Some(&[1, 2][..]),
            "still the set"
        );
        // A report of another set, or of another epoch, changes nothing.
        table.apply(&reassigned(0, vec![1, 3], moving.epoch));
        table.apply(&reassigned(0, vec![2, 3], moving.epoch + 1));
        assert_eq!(table.replicas(&[1; 16], 0), Some(&[1, 2][..]));
        let listed = table.reassignments();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].replicas, [1, 2]);
        // Done, in any order: the target is the set now, in the target's order.
        table.apply(&reassigned(0, vec![2, 3], moving.epoch));
        assert_eq!(table.replicas(&[1; 16], 0), Some(&[3, 2][..]));
        assert_eq!(table.target(&[1; 16], 0), None);
        // Redirected, then cancelled: every node of the move stays involved until the
        // group reports it reached the last target, and a report of an earlier epoch (even
        // of the same set: there and back) is not the end of the move.
        table.apply(&reassign(vec![(1, vec![1, 3])]));
        let first = table.moving(&[1; 16], 1).unwrap().epoch;
        table.apply(&reassign(vec![(1, vec![1, 4])]));
        table.apply(&reassign(vec![(1, vec![1, 3])]));
        let back = table.moving(&[1; 16], 1).unwrap().clone();
        assert_eq!(
            (back.involved.clone(), back.target.clone()),
            (vec![1, 2, 3, 4], vec![1, 3])
        );
        table.apply(&reassigned(1, vec![3, 1], first));
        assert_eq!(
            table.replicas(&[1; 16], 1),
            Some(&[2, 3][..]),
            "a stale report"
        );
        table.apply(&reassign(vec![(1, vec![2, 3])]));
        let cancelled = table.moving(&[1; 16], 1).unwrap().clone();
        assert_eq!(cancelled.involved, [1, 2, 3, 4]);
        table.apply(&reassigned(1, vec![3, 2], cancelled.epoch));
        assert_eq!(table.replicas(&[1; 16], 1), Some(&[2, 3][..]));
        assert!(table.reassignments().is_empty());
        // A topic on every node is not reassigned; a deleted one's moves go with it.
        table.apply(&Change::Reassign {
            topic: topic("old", 2),
            targets: vec![(0, vec![1])],
        });
        assert_eq!(table.target(&[2; 16], 0), None);
        table.apply(&reassign(vec![(1, vec![1])]));
        table.apply(&Change::DeleteTopic(topic("a", 1)));
        assert!(table.reassignments().is_empty());
    }
}
