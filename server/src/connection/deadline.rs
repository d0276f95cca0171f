//! When a connection is closed for what it does not do: the idle timeout
//! (`connections_max_idle_ms`, Kafka's `connections.max.idle.ms`) and the request read
//! timeout (`request_read_timeout_ms`).
//!
//! The reader, the handlers and the writer of a connection note what happens in its
//! [`Activity`]; [`watch`] sleeps until the earliest deadline that applies and reports
//! which one passed. The rules, checked by [`Activity::check`]:
//!
//! - *Request read*: a frame whose first byte arrived must be whole within
//!   `request_read_timeout_ms`, however slowly its bytes trickle in (slowloris). The clock
//!   does not run while the connection is not being read (backpressure).
//! - *Idle*: a connection that, for `connections_max_idle_ms`, completed no request, had no
//!   handler finish and had no response written is closed — [`Expired::Idle`] if it owes
//!   nothing (silent, or sending a request that never completes), [`Expired::Stalled`] if
//!   responses wait to be written (a client that does not read them). The clock does not
//!   run while a handler works (a long poll, a join waiting for its group), nor while a
//!   connection that owes nothing waits for its shard's in-flight bytes to drain: neither is
//!   the client's doing.
//!
//! A deadline met is checked again, so [`watch`] wakes at most once per
//! `min(connections_max_idle_ms, request_read_timeout_ms)` on a quiet connection.

use std::cell::Cell;
use std::time::{Duration, Instant};

use ringlog_engine::rt;

/// Which timeout closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Expired {
    #[error("idle for connections_max_idle_ms ({0} ms): no request completed")]
    Idle(u64),
    #[error(
        "stalled for connections_max_idle_ms ({0} ms): responses wait to be written and the \
         client reads none"
    )]
    Stalled(u64),
    #[error("a request frame did not arrive whole within request_read_timeout_ms ({0} ms)")]
    RequestRead(u64),
}

impl Expired {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Expired::Idle(_) => "idle",
            Expired::Stalled(_) => "stalled",
            Expired::RequestRead(_) => "request_read_timeout",
        }
    }
}

/// The two timeouts.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub idle: Duration,
    pub request_read: Duration,
}

/// What a connection did last, as its reader, handlers and writer note it.
#[derive(Debug)]
pub struct Activity {
    /// The last request completed, handler finished or response written (or the accept).
    last_progress: Cell<Instant>,
    /// When the first byte of the frame being received arrived; `None` between frames.
    frame_started: Cell<Option<Instant>>,
    /// Requests read whose responses are not written yet (acks=0 produces until handled).
    unanswered: Cell<usize>,
    /// Handlers working now.
    handlers_running: Cell<usize>,
    /// Whether the reader waits for in-flight bytes, and for whose.
    paused: Cell<Paused>,
}

/// Whether, and why, the reader is not reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Paused {
    No,
    /// Its own responses must drain first.
    ForConnection,
    /// Only other connections' bytes hold the shard over its limit.
    ForShard,
}

impl Activity {
    pub fn new(now: Instant) -> Activity {
        Activity {
            last_progress: Cell::new(now),
            frame_started: Cell::new(None),
            unanswered: Cell::new(0),
            handlers_running: Cell::new(0),
            paused: Cell::new(Paused::No),
        }
    }

    /// Bytes of a new frame arrived (the first of it, or the first since reading resumed).
    pub fn frame_begun(&self, now: Instant) {
        if self.frame_started.get().is_none() {
            self.frame_started.set(Some(now));
        }
    }

    /// A frame was read whole; `more` if bytes of the next one came with it.
    pub fn request_read(&self, now: Instant, more: bool) {
        self.last_progress.set(now);
        self.frame_started.set(more.then_some(now));
        self.unanswered.set(self.unanswered.get() + 1);
    }

    /// The reader stops (`Paused::For…`) or resumes reading (`Paused::No`).
    pub fn set_paused(&self, paused: Paused, now: Instant) {
        let was = self.paused.replace(paused);
        if paused != Paused::No {
            return;
        }
        // The clocks restart: the time not spent reading was not the client's doing (a
        // client that owes responses had its idle clock running all along).
        if self.frame_started.get().is_some() {
            self.frame_started.set(Some(now));
        }
        if was == Paused::ForShard && self.unanswered.get() == 0 {
            self.last_progress.set(now);
        }
    }

    /// A handler starts; it runs until [`Activity::handler_done`].
    pub fn handler_started(&self) {
        self.handlers_running.set(self.handlers_running.get() + 1);
    }

    pub fn handler_done(&self, now: Instant) {
        self.handlers_running.set(self.handlers_running.get() - 1);
        self.last_progress.set(now);
    }

    /// A request's response was written to its last byte (or it needed none).
    pub fn answered(&self, now: Instant) {
        self.unanswered.set(self.unanswered.get() - 1);
        self.last_progress.set(now);
    }

    /// Whether a deadline has passed at `now`; if not, when to look again.
    pub fn check(&self, now: Instant, timeouts: Timeouts) -> Result<Instant, Expired> {
        let ms = |duration: Duration| duration.as_millis() as u64;
        // A frame that begins after `now` expires after this; look again then at the latest.
        let mut next = now + timeouts.request_read;
        let paused = self.paused.get();
        if let (Some(started), Paused::No) = (self.frame_started.get(), paused) {
            let deadline = started + timeouts.request_read;
            if now >= deadline {
                return Err(Expired::RequestRead(ms(timeouts.request_read)));
            }
            next = next.min(deadline);
        }
        let owes = self.unanswered.get() > 0;
        let excused = self.handlers_running.get() > 0 || (!owes && paused == Paused::ForShard);
        if excused {
            return Ok(next.min(now + timeouts.idle));
        }
        let deadline = self.last_progress.get() + timeouts.idle;
        if now >= deadline {
            let idle_ms = ms(timeouts.idle);
            return Err(if owes {
                Expired::Stalled(idle_ms)
            } else {
                Expired::Idle(idle_ms)
            });
        }
        Ok(next.min(deadline))
    }
}

/// Sleeps until a deadline of `activity` passes; returns which.
pub async fn watch(activity: &Activity, timeouts: Timeouts) -> Expired {
    loop {
        match activity.check(Instant::now(), timeouts) {
            Ok(next) => rt::sleep_until(next).await,
            Err(expired) => return expired,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUTS: Timeouts = Timeouts {
        idle: Duration::from_secs(600),
        request_read: Duration::from_secs(30),
    };

    fn at(start: Instant, seconds: u64) -> Instant {
        start + Duration::from_secs(seconds)
    }

    #[test]
    fn a_silent_connection_is_idle_after_the_idle_timeout() {
        let t0 = Instant::now();
        let activity = Activity::new(t0);
        assert_eq!(activity.check(t0, TIMEOUTS), Ok(at(t0, 30)));
        assert_eq!(activity.check(at(t0, 599), TIMEOUTS), Ok(at(t0, 600)));
        assert_eq!(
            activity.check(at(t0, 600), TIMEOUTS),
            Err(Expired::Idle(600_000))
        );
        // A request read and answered restarts the clock.
        activity.request_read(at(t0, 100), false);
        activity.answered(at(t0, 101));
        assert_eq!(activity.check(at(t0, 600), TIMEOUTS), Ok(at(t0, 630)));
        assert_eq!(
            activity.check(at(t0, 701), TIMEOUTS),
            Err(Expired::Idle(600_000))
        );
    }

    #[test]
    fn a_frame_trickling_in_must_complete_within_the_request_read_timeout() {
        let t0 = Instant::now();
        let activity = Activity::new(t0);
        activity.frame_begun(at(t0, 5));
        // Later bytes of the same frame do not move its start.
        activity.frame_begun(at(t0, 20));
        assert_eq!(activity.check(at(t0, 20), TIMEOUTS), Ok(at(t0, 35)));
        assert_eq!(
            activity.check(at(t0, 35), TIMEOUTS),
            Err(Expired::RequestRead(30_000))
        );
        // While the reader waits for in-flight bytes, the frame's clock stops, and restarts
        // when reading resumes.
        activity.set_paused(Paused::ForConnection, at(t0, 21));
        assert!(activity.check(at(t0, 40), TIMEOUTS).is_ok());
        activity.set_paused(Paused::No, at(t0, 50));
        assert_eq!(activity.check(at(t0, 79), TIMEOUTS), Ok(at(t0, 80)));
        activity.request_read(at(t0, 60), false);
        assert_eq!(activity.check(at(t0, 100), TIMEOUTS), Ok(at(t0, 130)));
    }

    #[test]
    fn unwritten_responses_stall_but_working_handlers_and_a_full_shard_excuse() {
        let t0 = Instant::now();
        let activity = Activity::new(t0);
        activity.request_read(at(t0, 1), false);
        activity.handler_started();
        // A long poll or a join: not idle however long it works.
        assert!(activity.check(at(t0, 5000), TIMEOUTS).is_ok());
        activity.handler_done(at(t0, 5000));
        // Its response is not written: the client is not reading.
        activity.set_paused(Paused::ForShard, at(t0, 5000));
        assert_eq!(
            activity.check(at(t0, 5600), TIMEOUTS),
            Err(Expired::Stalled(600_000))
        );
        activity.answered(at(t0, 5100));
        // It owes nothing and waits only for other connections' bytes: excused.
        assert!(activity.check(at(t0, 9000), TIMEOUTS).is_ok());
        // Reading again, its idle clock starts then.
        activity.set_paused(Paused::No, at(t0, 9000));
        assert_eq!(activity.check(at(t0, 9000), TIMEOUTS), Ok(at(t0, 9030)));
        assert_eq!(
            activity.check(at(t0, 9600), TIMEOUTS),
            Err(Expired::Idle(600_000))
        );
    }
}
