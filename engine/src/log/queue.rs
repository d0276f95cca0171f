//! The appender's command queue: bounded, first come first served, one consumer, all on
//! one shard (a `RefCell`, no locks or atomics).
//!
//! A sender that finds the queue full waits for room; senders get room in the order they
//! started waiting, and none overtakes a waiting one, so a produce request that had to wait
//! is not passed by one read after it (a connection's requests reach the partition in the
//! order they were read). The consumer never waits on a sender, so a full queue cannot
//! deadlock it: whatever it is waiting for (a sync, a write), it then takes what is queued,
//! which makes room. When every sender is gone the consumer sees the end; when the consumer
//! is gone, sends fail and what was queued is dropped.
//!
//! Invariant: the queue never holds more than its capacity, asserted on every insert.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

/// A bounded queue with room for `capacity` items (at least 1).
pub(crate) fn bounded<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    assert!(capacity > 0, "a queue needs room for one item");
    let inner = Rc::new(RefCell::new(Inner {
        items: VecDeque::new(),
        capacity,
        senders: 1,
        receiver_alive: true,
        receiver_waker: None,
        waiting: VecDeque::new(),
        ticket_next: 0,
        len_max: 0,
    }));
    (
        Sender {
            inner: inner.clone(),
        },
        Receiver { inner },
    )
}

struct Inner<T> {
    items: VecDeque<T>,
    capacity: usize,
    senders: usize,
    receiver_alive: bool,
    receiver_waker: Option<Waker>,
    /// Senders waiting for room, oldest first: their ticket and how to wake them.
    waiting: VecDeque<(u64, Option<Waker>)>,
    ticket_next: u64,
    /// The most items the queue ever held at once.
    len_max: usize,
}

impl<T> Inner<T> {
    fn push(&mut self, item: T) -> Option<Waker> {
        assert!(
            self.items.len() < self.capacity,
            "queue of {} items is full",
            self.capacity
        );
        self.items.push_back(item);
        self.len_max = self.len_max.max(self.items.len());
        self.receiver_waker.take()
    }

    /// The oldest waiting sender's waker, if there is room for it.
    fn next_with_room(&mut self) -> Option<Waker> {
        if self.items.len() >= self.capacity {
            return None;
        }
        self.waiting.front_mut().and_then(|(_, waker)| waker.take())
    }
}

/// The sending side; clones share the queue. The consumer sees the end when all are gone.
pub(crate) struct Sender<T> {
    inner: Rc<RefCell<Inner<T>>>,
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.inner.borrow_mut().senders += 1;
        Sender {
            inner: self.inner.clone(),
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let waker = {
            let mut inner = self.inner.borrow_mut();
            inner.senders -= 1;
            if inner.senders > 0 {
                return;
            }
            inner.receiver_waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl<T> Sender<T> {
    /// Queues `item`, waiting for room (behind every sender already waiting). Gives the
    /// item back if the consumer is gone.
    pub(crate) fn send(&self, item: T) -> Send<'_, T> {
        Send {
            sender: self,
            item: Some(item),
            ticket: None,
        }
    }

    /// The most items the queue ever held at once.
    #[cfg(test)]
    pub(crate) fn len_max(&self) -> usize {
        self.inner.borrow().len_max
    }
}

/// The future of [`Sender::send`]. Dropping it while it waits gives up its place.
pub(crate) struct Send<'a, T> {
    sender: &'a Sender<T>,
    item: Option<T>,
    /// Its place among the waiting senders, once it had to wait.
    ticket: Option<u64>,
}

impl<T> Unpin for Send<'_, T> {}

impl<T> Future for Send<'_, T> {
    type Output = Result<(), T>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let mut inner = this.sender.inner.borrow_mut();
        if !inner.receiver_alive {
            let Some(item) = this.item.take() else {
                unreachable!("a send is not polled after it completed");
            };
            return Poll::Ready(Err(item));
        }
        let first = match this.ticket {
            None => inner.waiting.is_empty(),
            Some(ticket) => inner.waiting.front().is_some_and(|(t, _)| *t == ticket),
        };
        if !first || inner.items.len() >= inner.capacity {
            let waker = Some(cx.waker().clone());
            if let Some(ticket) = this.ticket {
                if let Some(entry) = inner.waiting.iter_mut().find(|(t, _)| *t == ticket) {
                    entry.1 = waker;
                }
            } else {
                let ticket = inner.ticket_next;
                inner.ticket_next += 1;
                inner.waiting.push_back((ticket, waker));
                this.ticket = Some(ticket);
            }
            return Poll::Pending;
        }
        if this.ticket.take().is_some() {
            inner.waiting.pop_front();
        }
        let Some(item) = this.item.take() else {
            unreachable!("a send is not polled after it completed");
        };
        let receiver = inner.push(item);
        let next = inner.next_with_room();
        drop(inner);
        for waker in [receiver, next].into_iter().flatten() {
            waker.wake();
        }
        Poll::Ready(Ok(()))
    }
}

impl<T> Drop for Send<'_, T> {
    fn drop(&mut self) {
        let Some(ticket) = self.ticket else {
            return;
        };
        let next = {
            let mut inner = self.sender.inner.borrow_mut();
            inner.waiting.retain(|(t, _)| *t != ticket);
            inner.next_with_room()
        };
        if let Some(waker) = next {
            waker.wake();
        }
    }
}

/// The consuming side.
pub(crate) struct Receiver<T> {
    inner: Rc<RefCell<Inner<T>>>,
}

impl<T> Receiver<T> {
    /// The next item; `Ready(None)` once the queue is empty and every sender is gone.
    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        if let Some(item) = self.try_recv() {
            return Poll::Ready(Some(item));
        }
        let mut inner = self.inner.borrow_mut();
        if inner.senders == 0 {
            return Poll::Ready(None);
        }
        inner.receiver_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// The next item if one is queued.
    pub(crate) fn try_recv(&mut self) -> Option<T> {
        let (item, next) = {
            let mut inner = self.inner.borrow_mut();
            let item = inner.items.pop_front()?;
            (item, inner.next_with_room())
        };
        if let Some(waker) = next {
            waker.wake();
        }
        Some(item)
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let (items, waiting) = {
            let mut inner = self.inner.borrow_mut();
            inner.receiver_alive = false;
            (
                std::mem::take(&mut inner.items),
                std::mem::take(&mut inner.waiting),
            )
        };
        // Dropped outside the borrow: an item's destructor may do anything.
        drop(items);
        for waker in waiting.into_iter().filter_map(|(_, waker)| waker) {
            waker.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::rc::Rc;

    use super::*;
    use crate::rt;

    #[test]
    fn senders_wait_for_room_in_the_order_they_came_and_none_overtakes() {
        rt::block_on(async {
            let (sender, mut receiver) = bounded::<u32>(2);
            let sent = Rc::new(RefCell::new(Vec::new()));
            let mut tasks = Vec::new();
            for value in 0..10 {
                let (sender, sent) = (sender.clone(), sent.clone());
                tasks.push(rt::spawn_local(async move {
                    sender.send(value).await.unwrap();
                    sent.borrow_mut().push(value);
                }));
            }
            rt::yield_now().await;
            assert_eq!(*sent.borrow(), [0, 1], "two fit, eight wait");
            let mut received = Vec::new();
            while received.len() < 10 {
                let item = std::future::poll_fn(|cx| receiver.poll_recv(cx)).await;
                received.push(item.unwrap());
                // A sender arriving now queues behind the waiting ones.
                assert!(sender.inner.borrow().items.len() <= 2);
            }
            for task in tasks {
                task.await.unwrap();
            }
            assert_eq!(received, (0..10).collect::<Vec<_>>());
            assert_eq!(*sent.borrow(), (0..10).collect::<Vec<_>>());
            assert_eq!(sender.len_max(), 2);
            drop(sender);
            let end = std::future::poll_fn(|cx| receiver.poll_recv(cx)).await;
            assert_eq!(end, None, "every sender is gone");
        })
        .unwrap();
    }

    #[test]
    fn a_sender_that_gives_up_waiting_lets_the_next_one_in() {
        rt::block_on(async {
            let (sender, mut receiver) = bounded::<u32>(1);
            sender.send(0).await.unwrap();
            let mut abandoned = Box::pin(sender.send(1));
            let polled = futures::poll!(abandoned.as_mut());
            assert!(polled.is_pending(), "the queue is full");
            let next = sender.clone();
            let waiting = rt::spawn_local(async move { next.send(2).await });
            rt::yield_now().await;
            drop(abandoned);
            assert_eq!(receiver.try_recv(), Some(0));
            waiting.await.unwrap().unwrap();
            assert_eq!(receiver.try_recv(), Some(2));
            drop(receiver);
            assert_eq!(sender.send(3).await, Err(3), "the consumer is gone");
        })
        .unwrap();
    }

    /// A burst of concurrent appends, far more than the queue holds, to a log whose
    /// appender waits for a sync after every group, on a storage whose operations take a
    /// while (seeded latency): the queue fills to its bound and no further, nothing
    /// deadlocks while the appender waits, every append completes, and offsets follow the
    /// order the appends came in.
    #[test]
    fn a_burst_of_appends_fills_the_queue_to_its_bound_and_completes_in_order() {
        use crate::batch::BatchBuilder;
        use crate::limits::COMMANDS_QUEUED_PER_PARTITION_MAX;
        use crate::log::{Ack, PartitionId, PartitionLog};
        use crate::storage::fault::FaultStorage;
        use crate::topic::{FlushPolicy, TopicConfig};

        let appends = 3 * COMMANDS_QUEUED_PER_PARTITION_MAX + 7;
        rt::block_on(async {
            let id = PartitionId {
                topic: std::sync::Arc::from("burst"),
                partition: 0,
            };
            let config = TopicConfig::builder()
                .flush(FlushPolicy::Always)
                .build()
                .unwrap();
            let dir = std::path::Path::new("/data/burst-0");
            let storage = FaultStorage::new().with_latency(7, 8);
            let log = PartitionLog::open(storage, dir, id, config).await.unwrap();
            let tasks: Vec<_> = (0..appends)
                .map(|index| {
                    let log = log.clone();
                    let mut builder = BatchBuilder::new();
                    let value = format!("{index}");
                    builder.push(0, None, Some(value.as_bytes()), &[]).unwrap();
                    let batch = bytes::Bytes::from(builder.build());
                    rt::spawn_local(async move { log.append(batch, Ack::Durable).await })
                })
                .collect();
            for (index, task) in tasks.into_iter().enumerate() {
                let appended = task.await.unwrap().unwrap();
                assert_eq!(
                    appended.offset_first, index as i64,
                    "in the order they came"
                );
            }
            assert_eq!(log.commands_queued_max(), COMMANDS_QUEUED_PER_PARTITION_MAX);
            assert_eq!(log.offsets().durable_end, appends as i64);
            log.close().await.unwrap();
        })
        .unwrap();
    }
}
