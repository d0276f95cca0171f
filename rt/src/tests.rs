//! Tests of the runtime against the real kernel: every operation, the drop-while-in-flight
//! guarantee, linked chains, a full submission queue, timers, cross-core messages, and the
//! error path when io_uring is unavailable.

use std::cell::Cell;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::rc::Rc;
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
