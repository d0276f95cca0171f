//! How far this node applied the controller's log (`node.rs`), for those who wait on it
//! (creating a topic answers once this node applied the command). The applier advances it,
//! or marks it stopped when it fails; either wakes every waiter, none of which polls. It
//! lives on shard 0 with the controller, so nothing here is shared between threads.
//!
//! The offset is also kept on disk ([`APPLIED_FILE`], replaced atomically at once after a
//! configuration change, else once per read of the log), so a restarted node applies only what it had not: applying a
//! command again is harmless for most (a topic created or deleted already is left as it
//! is; one created, or partitions added, get the replicas the node did not open yet, see
//! `Cluster::group_voters`), but replaying old configuration changes would set each old configuration again for
//! a moment, long enough for a retention check to delete by it. The file is one line:
//! `ringlog-controller-applied 1 <offset>`.

use std::cell::{Cell, RefCell};
use std::io;
use std::path::Path;
use std::task::{Poll, Waker};

use ringlog_engine::rt;

/// The file in the data directory that holds how far the controller's log is applied.
pub const APPLIED_FILE: &str = "cluster-applied";
const APPLIED_MAGIC: &str = "ringlog-controller-applied 1";
/// The longest file this module writes, with room: a longer one is not read.
const APPLIED_FILE_BYTES_MAX: u64 = 64;

/// The controller offset applied so far by this data directory's node: 0 if the file is
/// not there (a new directory, or one from before the file existed: the log is applied
/// again from its start, which only repeats what it did).
pub(crate) fn read_applied(data_dir: &Path) -> Result<i64, String> {
    let path = data_dir.join(APPLIED_FILE);
    let bad = |what: &str| format!("{}: {what}", path.display());
    let length = match std::fs::metadata(&path) {
        Ok(metadata) => metadata.len(),
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(error) => return Err(bad(&error.to_string())),
    };
    if length > APPLIED_FILE_BYTES_MAX {
        return Err(bad(&format!(
            "{length} bytes, at most {APPLIED_FILE_BYTES_MAX}"
        )));
    }
    let text = std::fs::read_to_string(&path).map_err(|error| bad(&error.to_string()))?;
    let offset = (text.strip_suffix('\n'))
        .and_then(|line| line.strip_prefix(APPLIED_MAGIC))
        .and_then(|rest| rest.strip_prefix(' '))
        .and_then(|number| number.parse::<i64>().ok())
        .filter(|offset| *offset >= 0);
    offset.ok_or_else(|| {
        bad(&format!(
            "not `{APPLIED_MAGIC} <offset>`; remove it to apply the controller's log again"
        ))
    })
}

/// Replaces the file with `offset`, durably: written to a temporary file, synced, renamed
/// over the old one, and the directory synced.
pub(crate) async fn write_applied(data_dir: &Path, offset: i64) -> io::Result<()> {
    let path = data_dir.join(APPLIED_FILE);
    let tmp = data_dir.join(format!("{APPLIED_FILE}.tmp"));
    let file = rt::File::create(&tmp).await?;
    let line = format!("{APPLIED_MAGIC} {offset}\n").into_bytes();
    let (written, _) = file.write_all_at(line, 0).await;
    written?;
    file.sync_all().await?;
    file.close().await?;
    rt::rename(&tmp, &path).await?;
    rt::sync_dir(data_dir).await
}

/// The controller log's offset applied on this node, and whether its applier stopped.
pub(crate) struct Applied {
    offset: Cell<i64>,
    stopped: Cell<bool>,
    /// Those waiting in [`Applied::wait`]: one entry per waiting future (a future woken
    /// spuriously replaces its own entry), taken at each advance. Bounded by the requests
    /// that wait (CreateTopics in flight on this node).
    waiters: RefCell<Vec<Waker>>,
}

/// The applier stopped before it reached the offset waited for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stopped;

impl Applied {
    /// Applied up to `offset` (from [`read_applied`]).
    pub(crate) fn new(offset: i64) -> Applied {
        Applied {
            offset: Cell::new(offset),
            stopped: Cell::new(false),
            waiters: RefCell::new(Vec::new()),
        }
    }

    /// Everything below `offset` is applied.
    pub(crate) fn advance(&self, offset: i64) {
        assert!(
            offset >= self.offset.get(),
            "the applied offset never goes back"
        );
        self.offset.set(offset);
        self.wake_all();
    }

    /// The applier stopped: nothing more is applied until the node restarts.
    pub(crate) fn stop(&self) {
        self.stopped.set(true);
        self.wake_all();
    }

    /// Waits until everything below `offset` is applied, or the applier stopped.
    pub(crate) async fn wait(&self, offset: i64) -> Result<(), Stopped> {
        std::future::poll_fn(|cx| {
            if self.offset.get() >= offset {
                return Poll::Ready(Ok(()));
            }
            if self.stopped.get() {
                return Poll::Ready(Err(Stopped));
            }
            let mut waiters = self.waiters.borrow_mut();
            if !waiters.iter().any(|waiter| waiter.will_wake(cx.waker())) {
                waiters.push(cx.waker().clone());
            }
            Poll::Pending
        })
        .await
    }

    fn wake_all(&self) {
        let waiters = std::mem::take(&mut *self.waiters.borrow_mut());
        for waiter in waiters {
            waiter.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::pin::pin;

    use futures::FutureExt;
    use ringlog_engine::rt;

    use super::{read_applied, write_applied, Applied, Stopped, APPLIED_FILE};

    #[test]
    fn a_waiter_is_answered_when_the_applier_gets_there_or_stops() {
        let applied = Applied::new(0);
        let mut reached = pin!(applied.wait(5));
        let mut never = pin!(applied.wait(9));
        assert!(reached.as_mut().now_or_never().is_none());
        assert!(never.as_mut().now_or_never().is_none());
        applied.advance(3);
        assert!(reached.as_mut().now_or_never().is_none(), "not there yet");
        applied.advance(5);
        assert_eq!(reached.now_or_never(), Some(Ok(())));
        applied.stop();
        assert_eq!(
            never.now_or_never(),
            Some(Err(Stopped)),
            "not a timeout: stopped"
        );
        assert_eq!(
            applied.wait(4).now_or_never(),
            Some(Ok(())),
            "applied before it stopped"
        );
    }

    #[test]
    fn the_applied_offset_survives_in_its_file_and_a_damaged_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_applied(dir.path()), Ok(0), "no file: from the start");
        rt::block_on(write_applied(dir.path(), 4_321))
            .unwrap()
            .unwrap();
        assert_eq!(read_applied(dir.path()), Ok(4_321));
        rt::block_on(write_applied(dir.path(), 4_400))
            .unwrap()
            .unwrap();
        assert_eq!(read_applied(dir.path()), Ok(4_400));
        for damaged in [
            "",
            "ringlog-controller-applied 1 -3\n",
            "ringlog 1 5\n",
            "x".repeat(100).as_str(),
        ] {
            std::fs::write(dir.path().join(APPLIED_FILE), damaged).unwrap();
            let error = read_applied(dir.path()).unwrap_err();
            assert!(error.contains(APPLIED_FILE), "{error}");
        }
    }
}
