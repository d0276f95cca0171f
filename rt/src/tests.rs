//! Tests of the runtime against the real kernel: every operation, the drop-while-in-flight
//! guarantee, linked chains, a full submission queue, timers, cross-core messages, and the
//! error path when io_uring is unavailable.

use std::cell::Cell;
use std::future::Future;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use futures::StreamExt;

use super::*;

fn run<F: std::future::Future>(future: F) -> F::Output {
    block_on(future).expect("io_uring is available on the test machine")
}

fn localhost() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A buffer that records when it is freed, to prove the runtime keeps buffers alive while
/// the kernel may still use them.
struct TrackedBuf {
    bytes: Vec<u8>,
    freed: Rc<Cell<bool>>,
}

impl Drop for TrackedBuf {
    fn drop(&mut self) {
        self.freed.set(true);
    }
}

// SAFETY: forwards to the Vec, whose heap memory does not move.
unsafe impl IoBuf for TrackedBuf {
    fn stable_ptr(&self) -> *const u8 {
        self.bytes.stable_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.bytes.bytes_init()
    }
    fn bytes_total(&self) -> usize {
        self.bytes.bytes_total()
    }
}

// SAFETY: as above.
unsafe impl IoBufMut for TrackedBuf {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.bytes.stable_mut_ptr()
    }
    unsafe fn set_init(&mut self, len: usize) {
        // SAFETY: forwarded with the caller's promise.
        unsafe { self.bytes.set_init(len) };
    }
}

/// A buffer that counts the pointers it hands out for writing, to check that the kernel
/// writes only through those.
struct WriteCountingBuf {
    bytes: Vec<u8>,
    mut_ptrs: Rc<Cell<usize>>,
}

// SAFETY: forwards to the Vec, whose heap memory does not move.
unsafe impl IoBuf for WriteCountingBuf {
    fn stable_ptr(&self) -> *const u8 {
        self.bytes.stable_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.bytes.bytes_init()
    }
    fn bytes_total(&self) -> usize {
        self.bytes.bytes_total()
    }
}

// SAFETY: as above.
unsafe impl IoBufMut for WriteCountingBuf {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.mut_ptrs.set(self.mut_ptrs.get() + 1);
        self.bytes.stable_mut_ptr()
    }
    unsafe fn set_init(&mut self, len: usize) {
        // SAFETY: forwarded with the caller's promise.
        unsafe { self.bytes.set_init(len) };
    }
}

/// Polls `future` once with a waker that does nothing; returns the panic message if the
/// poll panicked, `None` otherwise.
fn poll_once_for_panic<F: Future + Unpin>(future: &mut F) -> Option<String> {
    let waker = futures::task::noop_waker();
    let mut cx = TaskContext::from_waker(&waker);
    let polled = std::panic::catch_unwind(AssertUnwindSafe(|| {
        matches!(Pin::new(future).poll(&mut cx), Poll::Ready(_))
    }));
    match polled {
        Ok(_) => None,
        Err(panic) => Some(
            panic
                .downcast_ref::<String>()
                .cloned()
                .unwrap_or_else(|| "non-text panic".to_owned()),
        ),
    }
}

/// How many of this process's descriptors are open on `path`.
fn descriptors_open_on(path: &std::path::Path) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter(|target| target == path)
        .count()
}

/// Waits until `client`'s peer has closed the connection (a read returns 0 bytes), failing
/// after 10 s: proof that a descriptor the runtime accepted for it was closed.
fn assert_peer_closed(client: &mut std::net::TcpStream) {
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut byte = [0u8; 1];
    match client.read(&mut byte) {
        Ok(0) => {}
        other => panic!("the accepted descriptor is still open: read gave {other:?}"),
    }
}

/// Waits until the driver has reaped `count` more completions than `before`.
async fn reaped_beyond(before: u64, count: u64) {
    settle_until(|| driver_stats().completions_reaped >= before + count).await;
}

async fn settle_until(mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "condition not reached in 10 s");
        sleep(Duration::from_millis(1)).await;
    }
}

#[test]
fn spawned_tasks_run_and_join() {
    let total = run(async {
        let handles: Vec<_> = (0..100u64)
            .map(|i| {
                spawn_local(async move {
                    yield_now().await;
                    i * 2
                })
            })
            .collect();
        let mut total = 0;
        for handle in handles {
            total += handle.await.unwrap();
        }
        total
    });
    assert_eq!(total, 9900);
}

#[test]
fn file_write_read_sync_allocate_metadata_close() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data");
    run(async {
        let file = File::create(&path).await.unwrap();
        let (result, _) = file.write_all_at(b"hello, ring".to_vec(), 4).await;
        result.unwrap();
        file.sync_data().await.unwrap();
        file.sync_all().await.unwrap();
        let (read, buf) = file.read_at(Vec::with_capacity(64), 0).await;
        assert_eq!(read.unwrap(), 15);
        assert_eq!(
            &buf[..],
            b"\0\0\0\0hello, ring",
            "the hole before offset 4 reads as zeros"
        );
        let (read, _) = file.read_at(Vec::with_capacity(8), 100).await;
        assert_eq!(read.unwrap(), 0, "reading past the end returns 0");

        file.allocate(0, 1 << 20, 0).await.unwrap();
        let metadata = file.metadata().await.unwrap();
        assert_eq!(metadata.len, 1 << 20, "fallocate mode 0 extends the size");
        assert!(metadata.allocated_bytes >= 1 << 20);
        file.close().await.unwrap();
    });
    assert_eq!(&std::fs::read(&path).unwrap()[4..15], b"hello, ring");
}

#[test]
fn open_errors_are_typed() {
    let dir = tempfile::tempdir().unwrap();
    run(async {
        let missing = File::open(dir.path().join("missing")).await.unwrap_err();
        assert_eq!(missing.kind(), std::io::ErrorKind::NotFound);
        let nul = File::open("bad\0path").await.unwrap_err();
        assert_eq!(nul.kind(), std::io::ErrorKind::InvalidInput);
        let neither = OpenOptions::new()
            .open(dir.path().join("x"))
            .await
            .unwrap_err();
        assert_eq!(neither.raw_os_error(), Some(libc::EINVAL));
        let path = dir.path().join("once");
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .await
            .unwrap();
        let exists = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .await;
        assert_eq!(
            exists.unwrap_err().kind(),
            std::io::ErrorKind::AlreadyExists
        );
    });
}

#[test]
fn free_space_is_read_from_the_file_system_holding_a_path() {
    let dir = tempfile::tempdir().unwrap();
    let free = free_space_bytes(dir.path()).unwrap();
    assert!(free > 0, "the test's own directory has room");
    let missing = free_space_bytes(&dir.path().join("missing")).unwrap_err();
    assert_eq!(missing.kind(), std::io::ErrorKind::NotFound);
    let nul = free_space_bytes(std::path::Path::new("bad\0path")).unwrap_err();
    assert_eq!(nul.kind(), std::io::ErrorKind::InvalidInput);
}

#[test]
fn vectored_write_and_read_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    run(async {
        let file = File::create(dir.path().join("v")).await.unwrap();
        let bufs = vec![b"abc".to_vec(), b"defg".to_vec(), b"h".to_vec()];
        let (written, bufs) = file.writev_at(bufs, 10).await;
        assert_eq!(written.unwrap(), 8);
        assert_eq!(bufs.len(), 3, "buffers come back");
        let (read, bufs) = file
            .readv_at(vec![Vec::with_capacity(2), Vec::with_capacity(6)], 10)
            .await;
        assert_eq!(read.unwrap(), 8);
        assert_eq!(bufs[0], b"ab");
        assert_eq!(bufs[1], b"cdefgh");
        let (empty, _) = file.writev_at(Vec::<Vec<u8>>::new(), 0).await;
        assert_eq!(empty.unwrap_err().raw_os_error(), Some(libc::EINVAL));
    });
}

#[test]
fn vectored_reads_hand_the_kernel_pointers_borrowed_for_writing() {
    let dir = tempfile::tempdir().unwrap();
    run(async {
        let file = File::create(dir.path().join("v")).await.unwrap();
        file.write_all_at(b"abcdefgh".to_vec(), 0).await.0.unwrap();
        let mut_ptrs = Rc::new(Cell::new(0));
        let bufs: Vec<_> = (0..2)
            .map(|_| WriteCountingBuf {
                bytes: Vec::with_capacity(4),
                mut_ptrs: mut_ptrs.clone(),
            })
            .collect();
        let capacity = bufs[0].bytes_total();
        let (read, bufs) = file.readv_at(bufs, 0).await;
        assert_eq!(read.unwrap(), 8.min(2 * capacity));
        assert_eq!(mut_ptrs.get(), 2, "one writable pointer per buffer");
        assert!(bufs[0].bytes.starts_with(b"abcd"));
    });
}

#[test]
fn a_read_into_a_slice_past_the_initialized_part_exposes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    run(async {
        let file = File::create(dir.path().join("s")).await.unwrap();
        file.write_all_at(b"hello world".to_vec(), 0)
            .await
            .0
            .unwrap();
        let (read, slice) = file.read_at(Vec::with_capacity(64).slice(16..32), 0).await;
        assert_eq!(read.unwrap(), 11);
        let buf = slice.into_inner();
        assert!(
            buf.is_empty(),
            "bytes 0..16 were never written, yet the Vec counts {} initialized",
            buf.len()
        );
        let mut prefixed = Vec::with_capacity(32);
        prefixed.extend_from_slice(b"0123");
        let (read, slice) = file.read_at(prefixed.slice(4..32), 0).await;
        assert_eq!(read.unwrap(), 11);
        assert_eq!(slice.into_inner(), b"0123hello world");
    });
}

#[test]
fn direct_io_with_pooled_aligned_buffers() {
    let dir = tempfile::tempdir().unwrap();
    run(async {
        let path = dir.path().join("direct");
        let mut options = OpenOptions::new();
        options.read(true).write(true).create(true).direct(true);
        let file = match options.open(&path).await {
            Ok(file) => file,
            // Some file systems (tmpfs) refuse O_DIRECT; the test machine's ext4 does not.
            Err(error) => panic!("O_DIRECT open failed on the test file system: {error}"),
        };
        let pool = buf_pool();
        let mut buf = pool.get(8192);
        buf.extend_from_slice(&[7u8; 8192]);
        let ((written, _), synced) = file.write_at_and_sync_data(buf, 4096).await;
        assert_eq!(written.unwrap(), 8192);
        synced.unwrap();
        let (read, back) = file.read_at(pool.get(8192), 4096).await;
        assert_eq!(read.unwrap(), 8192);
        assert!(back.iter().all(|&b| b == 7));
        let mut unaligned = pool.get(4096);
        unaligned.extend_from_slice(&[1u8; 4096]);
        let (misaligned, _) = file.write_at(unaligned.slice(1..4096), 1).await;
        assert_eq!(misaligned.unwrap_err().raw_os_error(), Some(libc::EINVAL));
    });
}

#[test]
fn linked_write_then_fdatasync_runs_in_order_and_breaks_on_failure() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("linked");
    run(async {
        let file = File::create(&path).await.unwrap();
        let before = driver_stats();
        let ((written, _), synced) = file.write_at_and_sync_data(vec![1u8; 4096], 0).await;
        assert_eq!(written.unwrap(), 4096);
        synced.unwrap();
        let after = driver_stats();
        assert_eq!(after.entries_submitted - before.entries_submitted, 2);

        let (group, synced) = file
            .writev_at_and_sync_data(vec![vec![2u8; 10], vec![3u8; 5]], 4096)
            .await;
        assert_eq!(group.0.unwrap(), 15);
        synced.unwrap();

        // A write that fails breaks the chain: the sync after it is cancelled, not run.
        let read_only = File::open(&path).await.unwrap();
        let ((failed, _), skipped) = read_only.write_at_and_sync_data(vec![9u8; 16], 0).await;
        assert_eq!(failed.unwrap_err().raw_os_error(), Some(libc::EBADF));
        assert_eq!(skipped.unwrap_err().raw_os_error(), Some(libc::ECANCELED));
    });
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes.len(), 4096 + 15);
    assert_eq!(
        &bytes[4096..],
        &[2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3]
    );
}

#[test]
fn dropped_read_keeps_its_buffer_until_the_kernel_completes() {
    let (mut peer, local) = std::os::unix::net::UnixStream::pair().unwrap();
    run(async move {
        let stream = TcpStream::from_owned_fd_for_test(local.into());
        let freed = Rc::new(Cell::new(false));
        let buf = TrackedBuf {
            bytes: Vec::with_capacity(64),
            freed: freed.clone(),
        };
        let task = spawn_local({
            let stream = stream.clone();
            async move { stream.recv(buf).await }
        });
        // Let the receive reach the kernel, then drop the future waiting for it.
        settle_until(|| operations_in_flight() >= 2).await;
        task.abort();
        yield_now().await;
        assert!(
            !freed.get(),
            "buffer freed while the kernel could still write into it"
        );
        // The kernel completes the receive (with the data, or ECANCELED if the
        // cancellation won): only then may the buffer go.
        peer.write_all(b"late data").unwrap();
        settle_until(|| freed.get()).await;
        assert_eq!(operations_in_flight(), 1, "only the eventfd read is left");
    });
}

#[test]
fn dropped_write_keeps_its_buffer_until_the_kernel_completes() {
    let pipe = Pipe::new().unwrap();
    run(async move {
        let stream_end = pipe_writer_for_test(&pipe);
        // Fill the pipe so the next write has to wait in the kernel for a reader.
        let mut filler = std::fs::File::from(pipe.writer_fd_for_test());
        filler.write_all(&vec![4u8; pipe.capacity()]).unwrap();
        let freed = Rc::new(Cell::new(false));
        let buf = TrackedBuf {
            bytes: vec![5u8; 65536],
            freed: freed.clone(),
        };
        let write = stream_end.write_at(buf, u64::MAX);
        settle_until(|| operations_in_flight() >= 2).await;
        yield_now().await;
        drop(write);
        yield_now().await;
        assert!(
            !freed.get(),
            "buffer freed while the kernel could still read it"
        );
        let mut reader = pipe_reader_for_test(&pipe);
        let drained = std::thread::spawn(move || {
            let mut sink = vec![0u8; 1 << 16];
            let mut total = 0;
            while let Ok(count) = reader.read(&mut sink) {
                if count == 0 {
                    break;
                }
                total += count;
            }
            total
        });
        settle_until(|| freed.get()).await;
        drop(stream_end);
        drop(pipe);
        let _ = drained;
    });
}

/// A shard that always has a task ready still collects finished I/O: a turn with nothing
/// to submit must still ask the kernel for the completions it defers to this thread.
#[test]
fn completions_arrive_while_tasks_keep_the_shard_busy() {
    run(async {
        let done = Rc::new(Cell::new(false));
        let flag = done.clone();
        spawn_local(async move {
            kernel_timer(Duration::from_millis(10)).await.unwrap();
            flag.set(true);
        })
        .detach();
        let started = Instant::now();
        // Busy: the root yields on every turn and never parks, so only the executor's
        // per-turn enter can bring the timer's completion in.
        while !done.get() {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "the timer's completion never arrived while the shard was busy"
            );
            yield_now().await;
        }
    });
}

#[test]
fn full_submission_queue_is_submitted_and_retried() {
    let count = crate::limits::RING_SQ_ENTRIES as usize * 3;
    run(async move {
        let ops: Vec<_> = (0..count).map(|_| nop()).collect();
        assert!(
            driver_stats().enter_calls >= 2,
            "queue overflowed into several submissions"
        );
        for op in ops {
            op.await.unwrap();
        }
        assert_eq!(operations_in_flight(), 1);
    });
}

#[test]
fn many_timers_fire_in_order_and_never_early() {
    const TIMERS: u64 = 10_000;
    run(async {
        // Deadlines far enough ahead that every sleep is registered before the first one
        // is due, spread over 50 ms in an order unrelated to the order of registration.
        let base = Instant::now() + Duration::from_millis(250);
        let fired: Rc<std::cell::RefCell<Vec<Instant>>> = Rc::default();
        let handles: Vec<_> = (0..TIMERS)
            .map(|i| {
                let fired = fired.clone();
                let deadline = base + Duration::from_micros((i * 7919) % 50_000);
                spawn_local(async move {
                    let mut sleep = std::pin::pin!(sleep_until(deadline));
                    // A sleep whose deadline passed before its first poll completes at once,
                    // outside the timer heap: only registered ones have an order to keep.
                    let registered = futures::poll!(sleep.as_mut()).is_pending();
                    sleep.await;
                    assert!(Instant::now() >= deadline, "timer fired early");
                    if registered {
                        fired.borrow_mut().push(deadline);
                    }
                })
            })
            .collect();
        for handle in handles {
            handle.await.unwrap();
        }
        let fired = fired.borrow();
        assert!(
            fired.len() as u64 > TIMERS / 2,
            "only {} of {TIMERS} sleeps registered before their deadline",
            fired.len()
        );
        let out_of_order = fired.windows(2).position(|pair| pair[0] > pair[1]);
        assert_eq!(
            out_of_order, None,
            "timers fired out of deadline order (the deadlines are distinct)"
        );
    });
}

#[test]
fn timeouts_and_kernel_timers() {
    let (_peer, local) = std::os::unix::net::UnixStream::pair().unwrap();
    run(async move {
        let stream = TcpStream::from_owned_fd_for_test(local.into());
        let waited = timeout(
            Duration::from_millis(20),
            stream.recv(Vec::with_capacity(8)),
        )
        .await;
        assert_eq!(waited.err(), Some(Elapsed));
        assert_eq!(timeout(Duration::from_secs(5), async { 3 }).await, Ok(3));

        let start = Instant::now();
        kernel_timer(Duration::from_millis(15)).await.unwrap();
        assert!(start.elapsed() >= Duration::from_millis(15));

        let (result, _) = stream
            .prepare_recv(Vec::with_capacity(8))
            .submit_with_timeout(Duration::from_millis(10))
            .await;
        assert_eq!(result.unwrap_err().raw_os_error(), Some(libc::ECANCELED));

        let pending = stream.recv(Vec::with_capacity(8));
        pending.cancel();
        let (result, _) = pending.await;
        assert_eq!(result.unwrap_err().raw_os_error(), Some(libc::ECANCELED));
    });
}

#[test]
fn tcp_accept_connect_send_recv_and_zero_copy_send() {
    run(async {
        let listener = TcpListener::bind(localhost()).unwrap();
        let addr = listener.local_addr();
        let client = spawn_local(async move {
            let stream = TcpStream::connect(addr).await.unwrap();
            stream.set_nodelay(true).unwrap();
            let (sent, _) = stream.send_all(b"ping".to_vec()).await;
            sent.unwrap();
            let payload = vec![0xAB; 256 * 1024];
            let (sent, _) = stream.send_zc(payload).await;
            let mut total = sent.unwrap();
            while total < 256 * 1024 {
                let rest = vec![0xAB; 256 * 1024 - total];
                let (sent, _) = stream.send_zc(rest).await;
                total += sent.unwrap();
            }
        });
        let server = listener.accept().await.unwrap();
        assert_eq!(server.peer_addr().unwrap().ip(), addr.ip());
        let mut received = Vec::new();
        while received.len() < 4 + 256 * 1024 {
            let (count, buf) = server.recv(Vec::with_capacity(65536)).await;
            assert!(count.unwrap() > 0, "peer closed early");
            received.extend_from_slice(&buf);
        }
        assert_eq!(&received[..4], b"ping");
        assert!(received[4..].iter().all(|&b| b == 0xAB));
        client.await.unwrap();
    });
}

#[test]
fn multishot_accept_yields_every_connection() {
    run(async {
        let listener = TcpListener::bind_reuse_port(localhost()).unwrap();
        let addr = listener.local_addr();
        let mut incoming = listener.incoming();
        let clients: Vec<_> = (0..5)
            .map(|_| spawn_local(async move { TcpStream::connect(addr).await.unwrap() }))
            .collect();
        for _ in 0..5 {
            let stream = incoming.next().await.unwrap().unwrap();
            assert!(stream.peer_addr().is_ok());
        }
        for client in clients {
            client.await.unwrap();
        }
        drop(incoming);
        settle_until(|| operations_in_flight() == 1).await;
    });
}

#[test]
fn splice_sends_a_file_to_a_socket_without_user_space_copies() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("segment");
    let content: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&path, &content).unwrap();
    let received = run(async move {
        let listener = TcpListener::bind(localhost()).unwrap();
        let addr = listener.local_addr();
        let sender = spawn_local(async move {
            let stream = listener.accept().await.unwrap();
            let file = File::open(&path).await.unwrap();
            let pipe = Pipe::new().unwrap();
            send_file(&stream, &file, 1000, 2_000_000, &pipe)
                .await
                .unwrap();
            let short = send_file(&stream, &file, 2_999_000, 5000, &pipe).await;
            assert_eq!(short.unwrap_err().kind(), std::io::ErrorKind::UnexpectedEof);
        });
        let stream = TcpStream::connect(addr).await.unwrap();
        let mut received = Vec::new();
        while received.len() < 2_001_000 {
            let (count, buf) = stream.recv(Vec::with_capacity(1 << 20)).await;
            if count.unwrap() == 0 {
                break;
            }
            received.extend_from_slice(&buf);
        }
        sender.await.unwrap();
        received
    });
    assert_eq!(&received[..2_000_000], &content[1000..2_001_000]);
    assert_eq!(
        &received[2_000_000..],
        &content[2_999_000..],
        "the short tail was still sent"
    );
}

#[test]
fn shards_run_work_sent_from_any_thread_and_from_each_other() {
    let config = RuntimeConfig {
        shards: 2,
        pin_threads: true,
    };
    let runtime = Runtime::start(&config, |_shard| async {}).unwrap();
    let shards = runtime.shards().to_vec();
    let (first, second) = (shards[0].clone(), shards[1].clone());
    // A task on shard 0 asks shard 1 for a value and waits: the reply crosses threads and
    // must wake shard 0 from its sleep in io_uring_enter.
    let answer = futures::executor::block_on(first.spawn(move || async move {
        sleep(Duration::from_millis(5)).await;
        second
            .spawn(|| async { std::thread::current().name().map(str::to_owned) })
            .await
    }))
    .unwrap()
    .unwrap();
    assert_eq!(answer.as_deref(), Some("ringlog-shard-1"));

    // Many senders at once: every message arrives exactly once.
    let counter = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    std::thread::scope(|scope| {
        for _ in 0..4 {
            let shard = shards[0].clone();
            let counter = counter.clone();
            scope.spawn(move || {
                for _ in 0..2500 {
                    let counter = counter.clone();
                    futures::executor::block_on(shard.run(move || {
                        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }))
                    .unwrap();
                }
            });
        }
    });
    let all_arrived = futures::executor::block_on(shards[0].spawn(|| async { 0 }));
    assert_eq!(all_arrived, Ok(0));
    assert_eq!(counter.load(std::sync::atomic::Ordering::SeqCst), 10_000);
    runtime.shutdown().unwrap();
    assert!(
        futures::executor::block_on(shards[0].run(|| {})).is_err(),
        "stopped shard refuses"
    );
}

#[test]
fn shutdown_cancels_io_that_would_wait_forever() {
    let (_peer, local) = std::os::unix::net::UnixStream::pair().unwrap();
    let local = std::sync::Mutex::new(Some(local));
    let runtime = Runtime::start(
        &RuntimeConfig {
            shards: 1,
            pin_threads: false,
        },
        move |_| {
            let socket = local.lock().unwrap().take();
            async move {
                if let Some(socket) = socket {
                    let stream = TcpStream::from_owned_fd_for_test(socket.into());
                    let _ = stream.recv(Vec::with_capacity(16)).await;
                }
            }
        },
    )
    .unwrap();
    let receiving = futures::executor::block_on(runtime.shards()[0].spawn(|| async {
        // The eventfd read and the receive.
        settle_until(|| operations_in_flight() >= 2).await;
    }));
    assert_eq!(receiving, Ok(()));
    finishes_within(Duration::from_secs(60), "runtime shutdown", move || {
        runtime.shutdown()
    })
    .unwrap();
}

/// Runs `work` on a thread of its own and fails the test unless it finishes within
/// `limit` (a generous bound, not a measurement): a regression that makes `work` hang fails
/// here instead of stalling the whole run.
fn finishes_within<T: Send + 'static>(
    limit: Duration,
    what: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(work());
    });
    match finished.recv_timeout(limit) {
        Ok(value) => value,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("{what} did not finish within {limit:?}")
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => panic!("{what} panicked"),
    }
}

#[test]
fn unavailable_io_uring_gives_a_typed_error_naming_cause_and_remedy() {
    let error = std::thread::spawn(|| {
        seccomp::deny_io_uring_setup_for_current_thread().unwrap();
        block_on(async {}).unwrap_err()
    })
    .join()
    .unwrap();
    assert_eq!(error.cause(), UnavailableCause::DeniedByPolicy);
    let message = error.to_string();
    assert!(message.contains("seccomp"), "{message}");
    assert!(message.contains("to fix"), "{message}");
    assert_eq!(
        std::error::Error::source(&error)
            .and_then(|s| s.downcast_ref::<std::io::Error>())
            .and_then(std::io::Error::raw_os_error),
        Some(libc::EPERM)
    );
}

fn pipe_writer_for_test(pipe: &Pipe) -> File {
    File::from_owned_fd(pipe.writer_fd_for_test())
}

fn pipe_reader_for_test(pipe: &Pipe) -> std::fs::File {
    std::fs::File::from(pipe.reader_fd_for_test())
}

#[test]
fn paths_rename_remove_mkdir_and_directory_sync() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    run(async move {
        let nested = root.join("a/b/c");
        create_dir_all(&nested).await.unwrap();
        assert!(nested.is_dir());
        create_dir_all(&nested).await.unwrap();
        let from = nested.join("tmp");
        let to = nested.join("final");
        let file = File::create(&from).await.unwrap();
        file.write_all_at(b"x".to_vec(), 0).await.0.unwrap();
        file.set_len(10).unwrap();
        assert_eq!(file.metadata().await.unwrap().len, 10);
        rename(&from, &to).await.unwrap();
        sync_dir(&nested).await.unwrap();
        assert!(!from.exists() && to.exists());
        remove_file(&to).await.unwrap();
        assert!(!to.exists());
        let missing = remove_file(&to).await.unwrap_err();
        assert_eq!(missing.kind(), std::io::ErrorKind::NotFound);
        assert_eq!(initialized(&b"abc".to_vec()), b"abc");
    });
}

#[test]
#[allow(
    clippy::async_yields_async,
    reason = "the first runtime hands out a pending future on purpose"
)]
fn an_operation_kept_across_two_runtimes_is_refused_there_and_leaked() {
    let (_peer, local) = std::os::unix::net::UnixStream::pair().unwrap();
    let freed = Rc::new(Cell::new(false));
    let buf = TrackedBuf {
        bytes: Vec::with_capacity(64),
        freed: freed.clone(),
    };
    // The first runtime submits a receive that never completes and ends with it pending:
    // its teardown cancels the receive, and the slot belongs to a ring that is gone.
    let mut foreign = run(async move {
        let stream = TcpStream::from_owned_fd_for_test(local.into());
        let op = stream.recv(buf);
        yield_now().await;
        op
    });
    run(async move {
        yield_now().await;
        // A slot in this runtime under the same key the foreign operation holds.
        let timer = kernel_timer(Duration::from_secs(3600));
        yield_now().await;
        let in_flight = operations_in_flight();
        let message = poll_once_for_panic(&mut foreign)
            .expect("polling another runtime's operation must panic, not take its slot");
        assert!(
            message.contains("outside the runtime that registered it"),
            "{message}"
        );
        drop(foreign);
        assert!(
            !freed.get(),
            "the data of an operation dropped away from its runtime is leaked, not freed"
        );
        assert_eq!(
            operations_in_flight(),
            in_flight,
            "this runtime's slots untouched"
        );
        timer.cancel();
        let cancelled = timer.await.unwrap_err();
        assert_eq!(cancelled.raw_os_error(), Some(libc::ECANCELED));
    });
}

#[test]
#[allow(
    clippy::async_yields_async,
    reason = "the first runtime hands out a pending future on purpose"
)]
fn a_sleep_kept_across_two_runtimes_is_refused_there() {
    let mut foreign = run(async {
        let mut sleep = sleep(Duration::from_secs(3600));
        assert!(poll_once_for_panic(&mut sleep).is_none(), "registers");
        sleep
    });
    run(async move {
        let message = poll_once_for_panic(&mut foreign)
            .expect("an hour-long sleep from another runtime must not complete here");
        assert!(
            message.contains("outside the runtime that registered it"),
            "{message}"
        );
        let mine = sleep(Duration::from_millis(5));
        drop(foreign);
        let start = Instant::now();
        mine.await;
        assert!(start.elapsed() >= Duration::from_millis(5));
    });
}

#[test]
fn a_completed_open_nobody_takes_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("opened");
    std::fs::write(&path, b"x").unwrap();
    run(async {
        let reaped = driver_stats().completions_reaped;
        let open = OpenOptions::new()
            .read(true)
            .prepare_open(&path)
            .unwrap()
            .submit();
        reaped_beyond(reaped, 1).await;
        assert_eq!(descriptors_open_on(&path), 1, "opened, waiting in its slot");
        drop(open);
        assert_eq!(
            descriptors_open_on(&path),
            0,
            "the dropped open's descriptor leaked"
        );
    });
}

#[test]
fn a_completed_accept_nobody_takes_is_closed() {
    run(async {
        let listener = TcpListener::bind(localhost()).unwrap();
        let reaped = driver_stats().completions_reaped;
        let accept = listener.prepare_accept().submit();
        yield_now().await;
        let mut client = std::net::TcpStream::connect(listener.local_addr()).unwrap();
        reaped_beyond(reaped, 1).await;
        drop(accept);
        assert_peer_closed(&mut client);
    });
}

#[test]
fn an_accept_completing_after_its_owner_dropped_is_closed() {
    run(async {
        let listener = TcpListener::bind(localhost()).unwrap();
        // The connection is queued first, so the accept completes as the kernel takes the
        // entry, before the cancellation that dropping it requests can reach it.
        let mut client = std::net::TcpStream::connect(listener.local_addr()).unwrap();
        yield_now().await;
        let in_flight = operations_in_flight();
        let accept = listener.prepare_accept().submit();
        context::with(|ctx| ctx.driver.borrow_mut().submit_only_for_test()).unwrap();
        drop(accept);
        settle_until(|| operations_in_flight() == in_flight).await;
        assert_peer_closed(&mut client);
    });
}

#[test]
fn connections_queued_in_a_dropped_multishot_accept_are_closed() {
    run(async {
        let listener = TcpListener::bind(localhost()).unwrap();
        let mut incoming = listener.incoming();
        let reaped = driver_stats().completions_reaped;
        assert!(poll_once_for_panic(&mut incoming.next()).is_none(), "armed");
        yield_now().await;
        let mut clients: Vec<_> = (0..3)
            .map(|_| std::net::TcpStream::connect(listener.local_addr()).unwrap())
            .collect();
        reaped_beyond(reaped, 3).await;
        drop(incoming);
        for client in &mut clients {
            assert_peer_closed(client);
        }
    });
}

#[test]
fn a_close_that_cannot_be_pushed_closes_synchronously() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("closed");
    std::fs::write(&path, b"x").unwrap();
    run(async {
        let file = File::from_owned_fd(std::fs::File::open(&path).unwrap().into());
        assert_eq!(descriptors_open_on(&path), 1);
        context::with(|ctx| ctx.driver.borrow_mut().faults.push_errno = Some(libc::EIO));
        file.close().await.unwrap();
        assert_eq!(
            descriptors_open_on(&path),
            0,
            "the descriptor was lost, not closed"
        );
    });
}

#[test]
fn a_dropped_completion_stops_the_runtime_and_leaks_the_buffers_in_flight() {
    let (_peer, local) = std::os::unix::net::UnixStream::pair().unwrap();
    let freed = Rc::new(Cell::new(false));
    let buf = TrackedBuf {
        bytes: Vec::with_capacity(64),
        freed: freed.clone(),
    };
    let stopped = std::panic::catch_unwind(AssertUnwindSafe(move || {
        block_on(async move {
            let stream = TcpStream::from_owned_fd_for_test(local.into());
            spawn_local(async move { stream.recv(buf).await }).detach();
            settle_until(|| operations_in_flight() >= 2).await;
            // The next io_uring_enter answers EBADR: the kernel dropped a completion.
            context::with(|ctx| {
                let mut driver = ctx.driver.borrow_mut();
                driver.faults.enter_errnos.push_back(libc::EBADR);
            });
            std::future::pending::<()>().await;
        })
    }));
    let Err(panic) = stopped else {
        panic!("the runtime went on after the kernel dropped a completion");
    };
    let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        message.contains("dropped 1 io_uring completion"),
        "{message}"
    );
    assert!(
        !freed.get(),
        "a buffer the kernel may still write into was freed after the ring failed"
    );
}

#[test]
fn a_shard_whose_kernel_counts_dropped_completions_stops_with_a_typed_error() {
    let config = RuntimeConfig {
        shards: 1,
        pin_threads: false,
    };
    let runtime = Runtime::start(&config, |_| async {
        context::with(|ctx| ctx.driver.borrow_mut().faults.completions_dropped = 3);
        let _ = nop().await;
    })
    .unwrap();
    let shard = runtime.shards()[0].clone();
    let deadline = Instant::now() + Duration::from_secs(10);
    while futures::executor::block_on(shard.run(|| {})).is_ok() {
        assert!(
            Instant::now() < deadline,
            "the shard went on with lost completions"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    match runtime.shutdown() {
        Err(Error::ShardFailed {
            shard: 0,
            source: DriverError::CompletionsLost { count: 3 },
        }) => {}
        other => panic!("expected the shard's typed failure, got {other:?}"),
    }
}

#[test]
fn a_ring_that_stays_busy_fails_the_push_after_a_bounded_number_of_retries() {
    use crate::limits::{RING_ENTER_BUSY_RETRIES_MAX, RING_SQ_ENTRIES};
    let always_busy =
        || std::iter::repeat_n(libc::EAGAIN, RING_ENTER_BUSY_RETRIES_MAX as usize + 1);
    run(async move {
        yield_now().await;
        let busy = context::with(|ctx| {
            let mut driver = ctx.driver.borrow_mut();
            driver.faults.enter_errnos.extend(always_busy());
            driver.submit_and_reap()
        });
        assert!(
            matches!(busy, Err(DriverError::Busy { retries }) if retries == RING_ENTER_BUSY_RETRIES_MAX),
            "{busy:?}"
        );

        // A full submission queue makes the next push enter the kernel, which stays busy.
        let queued: Vec<_> = (0..RING_SQ_ENTRIES).map(|_| nop()).collect();
        context::with(|ctx| {
            ctx.driver
                .borrow_mut()
                .faults
                .enter_errnos
                .extend(always_busy());
        });
        let refused = nop().await.unwrap_err();
        assert_eq!(refused.raw_os_error(), Some(libc::EAGAIN));
        let left = context::with(|ctx| ctx.driver.borrow().faults.enter_errnos.len());
        assert_eq!(left, 0, "every busy answer was taken by that one push");
        assert!(
            !context::with(|ctx| ctx.driver.borrow().has_failed()),
            "busy is not fatal"
        );
        for op in queued {
            op.await.unwrap();
        }
    });
}

/// A no-op ready to submit, for linking.
fn prepared_nop() -> crate::op::Prepared<crate::op::Nop> {
    crate::op::Prepared::new(crate::op::Nop, |_| io_uring::opcode::Nop::new().build())
}

/// Lowers the current runtime's bound on operations in the kernel.
fn set_ops_in_flight_max(max: usize) {
    context::with(|ctx| ctx.driver.borrow_mut().set_ops_in_flight_max_for_test(max));
}

#[test]
fn more_operations_than_the_bound_all_complete_and_the_kernel_never_holds_more() {
    const BOUND: usize = 64;
    run(async {
        yield_now().await;
        set_ops_in_flight_max(BOUND);
        let handles: Vec<_> = (0..1000u32)
            .map(|i| {
                spawn_local(async move {
                    match i % 4 {
                        0 => kernel_timer(Duration::from_millis(1)).await.unwrap(),
                        1 => nop().await.unwrap(),
                        2 => {
                            let (first, second) = link(prepared_nop(), prepared_nop()).await;
                            first.unwrap();
                            second.unwrap();
                        }
                        _ => {
                            let op = prepared_nop().submit_with_timeout(Duration::from_secs(10));
                            op.await.unwrap();
                        }
                    }
                })
            })
            .collect();
        for handle in handles {
            handle.await.unwrap();
        }
        let stats = driver_stats();
        assert_eq!(
            stats.ops_in_flight_peak, BOUND as u64,
            "the bound was reached and never passed"
        );
        assert_eq!(stats.ops_in_flight, 0);
        assert_eq!(operations_in_flight(), 1, "only the eventfd read is left");
    });
}

#[test]
fn a_queued_linked_pair_waits_for_room_together_and_a_cancelled_queued_op_never_runs() {
    run(async {
        yield_now().await;
        set_ops_in_flight_max(2);
        let blocker_first = kernel_timer(Duration::from_millis(20));
        let blocker_second = kernel_timer(Duration::from_millis(20));
        assert_eq!(driver_stats().ops_in_flight, 2, "full");

        // The first of a queued pair dropped before it ran: the second fails as in a
        // broken chain, without waiting for room.
        let (first, second) = link_split(prepared_nop(), prepared_nop());
        drop(first);
        let broken = second.await.unwrap_err();
        assert_eq!(broken.raw_os_error(), Some(libc::ECANCELED));

        // A queued operation cancelled before it got room completes with ECANCELED.
        let cancelled = nop();
        cancelled.cancel();
        let cancelled = cancelled.await.unwrap_err();
        assert_eq!(cancelled.raw_os_error(), Some(libc::ECANCELED));
        let submitted = driver_stats().entries_submitted;

        // A pair waits until both fit, then goes as one chain.
        let pair = link(prepared_nop(), prepared_nop());
        let (pair, first, second) = futures::join!(pair, blocker_first, blocker_second);
        first.unwrap();
        second.unwrap();
        pair.0.unwrap();
        pair.1.unwrap();
        assert_eq!(driver_stats().entries_submitted - submitted, 2);
        assert_eq!(driver_stats().ops_in_flight_peak, 2);
    });
}

#[test]
fn a_shard_with_no_room_left_still_hears_other_threads() {
    let config = RuntimeConfig {
        shards: 1,
        pin_threads: false,
    };
    let runtime = Runtime::start(&config, |_| async {
        set_ops_in_flight_max(2);
        // Two operations that never complete hold all the room there is.
        let never = futures::future::join(
            kernel_timer(Duration::from_secs(3600)),
            kernel_timer(Duration::from_secs(3600)),
        );
        let _ = never.await;
    })
    .unwrap();
    let shard = runtime.shards()[0].clone();
    let ask = |shard: ShardHandle| {
        let (reply, answer) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let value = futures::executor::block_on(shard.spawn(|| async {
                settle_until(|| driver_stats().ops_in_flight == 2).await;
                7
            }));
            let _ = reply.send(value);
        });
        answer.recv_timeout(Duration::from_secs(10))
    };
    for round in 0..3 {
        assert_eq!(ask(shard.clone()), Ok(Ok(7)), "round {round}");
    }
    runtime.shutdown().unwrap();
}

#[test]
fn the_first_of_a_queued_pair_whose_second_was_dropped_needs_room_for_one() {
    run(async {
        yield_now().await;
        set_ops_in_flight_max(2);
        let long = kernel_timer(Duration::from_secs(3600));
        let short = kernel_timer(Duration::from_millis(5));
        let (first, second) = link_split(prepared_nop(), prepared_nop());
        let first = spawn_local(first);
        yield_now().await;
        drop(second);
        short.await.unwrap();
        // Only one slot ever frees while `long` is in the kernel.
        let alone = timeout(Duration::from_secs(10), first).await;
        assert!(
            matches!(alone, Ok(Ok(Ok(())))),
            "the first op waited for room for two: {alone:?}"
        );
        long.cancel();
        assert_eq!(
            long.await.unwrap_err().raw_os_error(),
            Some(libc::ECANCELED)
        );
    });
}
