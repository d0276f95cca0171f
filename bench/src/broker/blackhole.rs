//! A test double for a broker that stops answering: a real embedded ringlog broker behind
//! a loopback TCP proxy that forwards every request except Produce, which it swallows.
//! The broker never sees those requests and the client never gets an answer, as from a
//! broker whose appends hang; everything else (ApiVersions, Metadata, CreateTopics) is
//! answered by the real broker. The broker advertises the proxy's address, so a client
//! that follows Metadata to the partitions' leader (librdkafka) stays behind the proxy.
//!
//! The one fault it injects: Produce requests are dropped, never answered. The proxy
//! copies bytes with blocking threads (one pair per connection) and stops accepting when
//! dropped; a connection's threads end when either side closes.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use kafka_protocol::messages::ApiKey;
use ringlog_server::config::ServerConfig;
use ringlog_server::server::Server;

use super::Target;
use crate::error::{BenchError, IoContext};

/// Bytes of a request frame's size prefix and of the API key that follows it.
const SIZE_BYTES: usize = 4;
const API_KEY_BYTES: usize = 2;
/// The largest request frame the proxy forwards (the broker's default request limit).
const REQUEST_BYTES_MAX: usize = 100 << 20;

/// The proxy; stops accepting connections when dropped.
pub struct Blackhole {
    address: SocketAddr,
    stop: Arc<AtomicBool>,
    accepting: Option<JoinHandle<()>>,
}

/// Starts a broker on a temporary directory in `data_parent` behind a proxy that swallows
/// Produce requests; the target's address is the proxy's.
pub fn broker_behind_blackhole(data_parent: &Path) -> Result<(Target, Blackhole), BenchError> {
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .context(|| "binding the proxy".into())?;
    let address = listener
        .local_addr()
        .context(|| "the proxy's address".into())?;
    let dir = tempfile::tempdir_in(data_parent)
        .context(|| format!("creating a directory in {}", data_parent.display()))?;
    let mut config = ServerConfig::ephemeral(dir.path().to_path_buf());
    config.advertised_listener = address;
    let server = Server::start(config)?;
    let broker = server.address();
    let stop = Arc::new(AtomicBool::new(false));
    let accepting = {
        let stop = Arc::clone(&stop);
        std::thread::Builder::new()
            .name("blackhole-accept".into())
            .spawn(move || accept(&listener, broker, &stop))
            .context(|| "starting the proxy".into())?
    };
    let target = Target {
        address,
        embedded: Some((server, dir)),
    };
    let blackhole = Blackhole {
        address,
        stop,
        accepting: Some(accepting),
    };
    Ok((target, blackhole))
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // A connection wakes the accept loop to see `stop`; if it fails, nothing is
        // blocked in accept any more.
        let _ = TcpStream::connect(self.address);
        if let Some(accepting) = self.accepting.take() {
            let _ = accepting.join();
        }
    }
}

/// Accepts connections until `stop`, each forwarded to `broker` by two threads.
fn accept(listener: &TcpListener, broker: SocketAddr, stop: &AtomicBool) {
    for client in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = client else { continue };
        let Ok(upstream) = TcpStream::connect(broker) else {
            continue;
        };
        let (Ok(client_copy), Ok(upstream_copy)) = (client.try_clone(), upstream.try_clone())
        else {
            continue;
        };
        std::thread::spawn(move || forward_requests(client, upstream));
        std::thread::spawn(move || copy_responses(upstream_copy, client_copy));
    }
}

/// Client to broker, frame by frame, leaving out Produce requests; closes the broker's
/// side when the client closes its own.
fn forward_requests(mut client: TcpStream, mut upstream: TcpStream) {
    let produce = ApiKey::Produce as i16;
    while let Ok(frame) = read_frame(&mut client) {
        let key_at = SIZE_BYTES..SIZE_BYTES + API_KEY_BYTES;
        let key = frame
            .get(key_at)
            .and_then(|key| key.try_into().ok())
            .map(i16::from_be_bytes);
        if key == Some(produce) {
            continue;
        }
        if upstream.write_all(&frame).is_err() {
            break;
        }
    }
    let _ = upstream.shutdown(Shutdown::Both);
}

/// Broker to client, as is; closes the client's side when the broker closes its own.
fn copy_responses(mut upstream: TcpStream, mut client: TcpStream) {
    let _ = io::copy(&mut upstream, &mut client);
    let _ = client.shutdown(Shutdown::Both);
}

/// One whole request frame, size prefix included.
fn read_frame(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut size = [0; SIZE_BYTES];
    stream.read_exact(&mut size)?;
    let body_len = usize::try_from(i32::from_be_bytes(size))
        .ok()
        .filter(|&len| len <= REQUEST_BYTES_MAX)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "request frame size"))?;
    let mut frame = vec![0; SIZE_BYTES + body_len];
    frame[..SIZE_BYTES].copy_from_slice(&size);
    stream.read_exact(&mut frame[SIZE_BYTES..])?;
    Ok(frame)
}

/// Runs `run` on a thread of its own and returns its result, or panics if it has not
/// returned within `limit`: a test of a run that should stop fails instead of hanging.
pub fn within<T: Send + 'static>(
    limit: std::time::Duration,
    run: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (done, result) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // The receiver is gone only after the panic below.
        let _ = done.send(run());
    });
    match result.recv_timeout(limit) {
        Ok(result) => result,
        Err(error) => panic!("the run did not stop within {limit:?} ({error})"),
    }
}
