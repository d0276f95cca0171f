//! A group's inbox (`node.rs`): what reaches a group's task — the shard's ticks, peers'
//! messages, proposals — all on the shard that owns the group, so nothing here is shared
//! between threads.
//!
//! - **Bounded.** Commands queue up to the capacity the inbox is made with
//!   (`GROUP_INBOX_COMMANDS_MAX`); a push past it gives the command back, for the sender to
//!   drop (a peer's message: Raft sends again) or refuse (a proposal).
//! - **A tick is a flag**, not a command: set however many times while the task is busy (a
//!   slow fsync), it is taken once, so ticks never pile up and arrive in a burst. While the
//!   group sleeps (`hibernation.rs`) ticks are not even flagged: its task is not woken.
//! - **Held weakly by the task.** The shard's map of groups owns the inbox; once it lets
//!   go, the task's [`take`] ends with `None` (the inbox closed) instead of waiting forever.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::{Rc, Weak};
use std::task::{Poll, Waker};

/// A group's inbox of `T` (its task's commands).
pub(crate) struct Inbox<T> {
    commands: RefCell<VecDeque<T>>,
    capacity: usize,
    tick_due: Cell<bool>,
    /// Set while the group sleeps: ticks are dropped.
    asleep: Cell<bool>,
    /// The task waiting in [`take`], if it waits.
    waker: RefCell<Option<Waker>>,
}

/// What the task takes at once: whether a tick is due, and every queued command in order.
pub(crate) struct Taken<T> {
    pub(crate) tick: bool,
    pub(crate) commands: VecDeque<T>,
}

impl<T> Inbox<T> {
    /// An empty inbox that holds at most `capacity` commands (at least one).
    pub(crate) fn new(capacity: usize) -> Rc<Inbox<T>> {
        assert!(capacity > 0, "an inbox holds at least one command");
        Rc::new(Inbox {
            commands: RefCell::new(VecDeque::new()),
            capacity,
            tick_due: Cell::new(false),
            asleep: Cell::new(false),
            waker: RefCell::new(None),
        })
    }

    /// Marks a tick due (once, however often it is called before the task takes it),
    /// unless the group sleeps.
    pub(crate) fn tick(&self) {
        if self.asleep.get() {
            return;
        }
        self.tick_due.set(true);
        self.wake();
    }

    /// Whether the group sleeps (its task says so after each turn).
    pub(crate) fn set_asleep(&self, asleep: bool) {
        self.asleep.set(asleep);
    }

    /// Queues `command`, or gives it back if the inbox is full.
    pub(crate) fn push(&self, command: T) -> Result<(), T> {
        {
            let mut commands = self.commands.borrow_mut();
            if commands.len() >= self.capacity {
                return Err(command);
            }
            commands.push_back(command);
            assert!(commands.len() <= self.capacity);
        }
        self.wake();
        Ok(())
    }

    fn wake(&self) {
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
    }
}

impl<T> Drop for Inbox<T> {
    /// Wakes the task, whose [`take`] then finds the inbox gone.
    fn drop(&mut self) {
        if let Some(waker) = self.waker.get_mut().take() {
            waker.wake();
        }
    }
}

/// Waits until a tick is due or a command is queued, and takes them; `None` once the
/// inbox is gone.
pub(crate) async fn take<T>(inbox: &Weak<Inbox<T>>) -> Option<Taken<T>> {
    std::future::poll_fn(|cx| {
        let Some(inbox) = inbox.upgrade() else {
            return Poll::Ready(None);
        };
        let tick = inbox.tick_due.replace(false);
        let commands = std::mem::take(&mut *inbox.commands.borrow_mut());
        if tick || !commands.is_empty() {
            return Poll::Ready(Some(Taken { tick, commands }));
        }
        *inbox.waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use std::rc::Rc;

    use futures::FutureExt;

    use super::{take, Inbox};

    #[test]
    fn a_full_inbox_gives_a_command_back_and_takes_one_again_once_emptied() {
        let inbox = Inbox::new(2);
        inbox.push(1).unwrap();
        inbox.push(2).unwrap();
        assert_eq!(inbox.push(3), Err(3), "full");
        let taken = take(&Rc::downgrade(&inbox))
            .now_or_never()
            .unwrap()
            .unwrap();
        assert_eq!(Vec::from(taken.commands), [1, 2]);
        assert!(!taken.tick);
        inbox.push(3).unwrap();
    }

    #[test]
    fn ticks_while_the_task_is_busy_are_taken_once() {
        let inbox = Inbox::<u32>::new(1);
        for _ in 0..100 {
            inbox.tick();
        }
        let weak = Rc::downgrade(&inbox);
        let taken = take(&weak).now_or_never().unwrap().unwrap();
        assert!(taken.tick && taken.commands.is_empty());
        assert!(
            take(&weak).now_or_never().is_none(),
            "nothing more: it waits"
        );
    }

    #[test]
    fn a_sleeping_groups_ticks_do_not_wake_its_task_but_commands_do() {
        let inbox = Inbox::<u32>::new(1);
        let weak = Rc::downgrade(&inbox);
        inbox.set_asleep(true);
        inbox.tick();
        assert!(take(&weak).now_or_never().is_none(), "no tick taken");
        inbox.push(7).unwrap();
        let taken = take(&weak).now_or_never().unwrap().unwrap();
        assert!(!taken.tick);
        assert_eq!(Vec::from(taken.commands), [7]);
        inbox.set_asleep(false);
        inbox.tick();
        assert!(take(&weak).now_or_never().unwrap().unwrap().tick);
    }

    #[test]
    fn the_task_learns_that_its_inbox_is_gone() {
        let inbox = Inbox::<u32>::new(1);
        let weak = Rc::downgrade(&inbox);
        drop(inbox);
        assert!(take(&weak).now_or_never().unwrap().is_none());
    }
}
