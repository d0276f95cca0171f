//! Shards: one pinned OS thread per core, each running its own executor and ring, and the
//! handles other threads use to send them work.
//!
//! [`Runtime::start`] starts the shards and returns once every one has its ring (or with
//! the first shard's setup error, so an unusable io_uring is reported before any work
//! starts). Each shard runs its `main` task and then serves its mailbox until
//! [`Runtime::shutdown`]. Work for a shard is a closure sent to its bounded mailbox; it runs
//! on the shard and may spawn local tasks. [`ShardHandle::spawn`] wraps that into "run this
//! future there and give me its output".

use std::future::Future;
use std::thread;

use futures::channel::oneshot;

use super::context::{Context, Message, Remote};
use super::error::{DriverError, Error, RingSetupError};
use super::executor::{run, spawn_local, Cancelled};
use super::mailbox::{self, TrySendError};
use super::sync::Arc;

/// How to start the shards.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Number of shards (threads); default: one per CPU this process may run on.
    pub shards: usize,
    /// Pin shard `i` to the `i`-th allowed CPU (default true).
    pub pin_threads: bool,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            shards: allowed_cpus().len().max(1),
            pin_threads: true,
        }
    }
}

/// A handle to one shard, usable from any thread.
#[derive(Clone)]
pub struct ShardHandle {
    id: usize,
    remote: Arc<Remote>,
}

/// Work sent to a shard: a closure run there (it may spawn local tasks).
pub type Work = Message;

/// The shard has stopped; the work was not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("shard stopped")]
pub struct ShardStopped;

impl ShardHandle {
    /// The shard's index, `0..shards`.
    pub fn id(&self) -> usize {
        self.id
    }

    /// Queues `work` to run on the shard, or gives it back if the mailbox is full (or the
    /// shard stopped).
    pub fn try_run(&self, work: Work) -> Result<(), TrySendError<Work>> {
        self.remote.messages.try_send(work)
    }

    /// Queues `work` to run on the shard, waiting while its mailbox is full.
    pub async fn run<W: FnOnce() + Send + 'static>(&self, work: W) -> Result<(), ShardStopped> {
        let message: Message = Box::new(work);
        mailbox::Send::new(&self.remote.messages, message)
            .await
            .map_err(|_| ShardStopped)
    }

    /// Runs the future made by `make` as a task on the shard and returns its output.
    /// `make` is sent to the shard; the future itself is created there and need not be
    /// `Send`.
    pub async fn spawn<M, F, T>(&self, make: M) -> Result<T, Cancelled>
    where
        M: FnOnce() -> F + Send + 'static,
        F: Future<Output = T> + 'static,
        T: Send + 'static,
    {
        let (reply, output) = oneshot::channel();
        let work = move || {
            spawn_local(async move {
                let _ = reply.send(make().await);
            })
            .detach();
        };
        self.run(work).await.map_err(|ShardStopped| Cancelled)?;
        output.await.map_err(|oneshot::Canceled| Cancelled)
    }
}

/// The running shards.
pub struct Runtime {
    shards: Vec<ShardHandle>,
    stops: Vec<oneshot::Sender<()>>,
    threads: Vec<thread::JoinHandle<Result<(), DriverError>>>,
}

impl Runtime {
    /// Starts `config.shards` shards; each runs `main(shard_id)` as its first task.
    pub fn start<M, F>(config: &RuntimeConfig, main: M) -> Result<Runtime, Error>
    where
        M: Fn(usize) -> F + Send + Sync + 'static,
        F: Future<Output = ()> + 'static,
    {
        let main = std::sync::Arc::new(main);
        let cpus = allowed_cpus();
        let mut runtime = Runtime {
            shards: Vec::new(),
            stops: Vec::new(),
            threads: Vec::new(),
        };
        for shard in 0..config.shards.max(1) {
            let cpu = (config.pin_threads && !cpus.is_empty()).then(|| cpus[shard % cpus.len()]);
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            let (stop_tx, stop_rx) = oneshot::channel();
            let main = main.clone();
            let thread = thread::Builder::new()
                .name(format!("ringlog-shard-{shard}"))
                .spawn(move || shard_thread(shard, cpu, &ready_tx, stop_rx, move || main(shard)))
                .map_err(|source| Error::ThreadSpawn { shard, source })?;
            runtime.threads.push(thread);
            runtime.stops.push(stop_tx);
            match ready_rx.recv() {
                Ok(Ok(remote)) => runtime.shards.push(ShardHandle { id: shard, remote }),
                Ok(Err(source)) => {
                    let _ = runtime.stop_and_join();
                    return Err(Error::RingUnavailable { shard, source });
                }
                Err(_) => {
                    let _ = runtime.stop_and_join();
                    return Err(Error::ShardPanicked { shard });
                }
            }
        }
        Ok(runtime)
    }

    /// Handles to the shards, indexed by shard id.
    pub fn shards(&self) -> &[ShardHandle] {
        &self.shards
    }

    /// Stops every shard (their tasks are dropped, their I/O cancelled and waited for)
    /// and joins the threads. Reports the first shard that panicked or whose ring failed
    /// ([`Error::ShardFailed`]: that shard stopped on its own, earlier).
    pub fn shutdown(mut self) -> Result<(), Error> {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> Result<(), Error> {
        for stop in self.stops.drain(..) {
            let _ = stop.send(());
        }
        let mut result = Ok(());
        for (shard, thread) in self.threads.drain(..).enumerate() {
            let stopped = match thread.join() {
                Ok(Ok(())) => continue,
                Ok(Err(source)) => Error::ShardFailed { shard, source },
                Err(_) => Error::ShardPanicked { shard },
            };
            if result.is_ok() {
                result = Err(stopped);
            }
        }
        result
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        let _ = self.stop_and_join();
    }
}

/// One shard's life: set up its context, report ready, run `main` and the mailbox until
/// told to stop. Returns the ring's failure if that is what stopped it (the failure was
/// logged, the shard's tasks dropped and its in-flight memory leaked).
fn shard_thread<F: Future<Output = ()> + 'static>(
    shard: usize,
    cpu: Option<usize>,
    ready: &std::sync::mpsc::Sender<Result<Arc<Remote>, RingSetupError>>,
    stop: oneshot::Receiver<()>,
    main: impl FnOnce() -> F,
) -> Result<(), DriverError> {
    if let Some(cpu) = cpu {
        if let Err(error) = pin_current_thread(cpu) {
            tracing::warn!(shard, cpu, %error, "could not pin shard thread; running unpinned");
        }
    }
    let context = match Context::new() {
        Ok(context) => context,
        Err(error) => {
            let _ = ready.send(Err(error));
            return Ok(());
        }
    };
    let _guard = Context::enter(context.clone());
    if ready.send(Ok(context.remote.clone())).is_err() {
        return Ok(());
    }
    let stopped = run(&context, async move {
        spawn_local(main()).detach();
        let _ = stop.await;
    });
    if let Err(error) = &stopped {
        tracing::error!(shard, %error, "shard stopped: its ring failed");
    }
    stopped
}

/// The CPUs this process may run on, in order.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it for this thread.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: passes the size of the set we own.
    let result = unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &raw mut set) };
    if result != 0 {
        return Vec::new();
    }
    // SAFETY: CPU_ISSET reads the set within its size.
    (0..libc::CPU_SETSIZE as usize)
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect()
}

fn pin_current_thread(cpu: usize) -> std::io::Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_SET writes within it (cpu < CPU_SETSIZE).
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(std::io::ErrorKind::InvalidInput.into());
    }
    // SAFETY: as above.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: passes the size of the set we own; 0 is the calling thread.
    let result =
        unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set) };
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
