//! `probe tcp-echo`: TCP over loopback through the runtime, against iperf3's number.
//!
//! One shard (an `rt::block_on` thread) runs an echo server on 127.0.0.1: it receives into
//! one pooled buffer and sends what it got back before receiving again. The client sends
//! `message_bytes` messages back to back for `seconds` from one task and reads the echo from
//! another, so sending never waits for the echo (pipelined; the socket buffers bound what is
//! in flight). Then it shuts its sending side and reads until the echo ends; every byte sent
//! must come back.
//!
//! `--client same-shard` runs the client on the server's executor: one core does all four
//! copies (client send, server receive, server send, client receive). `--client thread`
//! runs it on a second thread with its own runtime, so two cores share the work as iperf3's
//! client and server processes do. One-way GB/s counts the payload once; round-trip GB/s
//! counts it twice (there and back).

use std::net::{Ipv4Addr, Shutdown, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use ringlog_engine::rt::{self, TcpListener, TcpStream};
use serde::Serialize;

use crate::error::{BenchError, IoContext};
use crate::machine::MachineInfo;
use crate::report::{gb_per_s, Report};
use crate::size::parse_size_bytes;

/// Where the client runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientPlacement {
    /// On the server's executor (one thread, one core).
    SameShard,
    /// On a second thread with its own runtime.
    Thread,
}

impl ClientPlacement {
    /// The name used on the command line.
    fn name(self) -> &'static str {
        match self {
            ClientPlacement::SameShard => "same-shard",
            ClientPlacement::Thread => "thread",
        }
    }
}

/// Parameters of `probe tcp-echo`.
#[derive(Debug, Clone, Args, Serialize)]
pub struct TcpEchoArgs {
    /// Bytes per message, e.g. 64KiB.
    #[arg(long, default_value = "64KiB", value_parser = parse_size_bytes)]
    pub message_bytes: u64,
    /// How long the client sends.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Where the client runs.
    #[arg(long, value_enum, default_value_t = ClientPlacement::SameShard)]
    pub client: ClientPlacement,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    #[serde(skip)]
    pub json: Option<PathBuf>,
}

/// What `probe tcp-echo` measured.
#[derive(Debug, Serialize)]
pub struct TcpEchoResults {
    /// Payload bytes the client sent (and received back).
    pub payload_bytes: u64,
    pub messages: u64,
    /// Seconds from the first send to the last echoed byte received.
    pub elapsed_s: f64,
    /// Payload counted once, 10^9 bytes per second.
    pub one_way_gb_per_s: f64,
    /// Payload counted there and back, 10^9 bytes per second.
    pub round_trip_gb_per_s: f64,
    /// `io_uring_enter` calls of the server's shard per message echoed.
    pub server_enter_calls_per_message: f64,
}

/// What the client saw.
struct ClientOutcome {
    sent_bytes: u64,
    received_bytes: u64,
    elapsed: Duration,
}

/// Runs the probe, prints its results and writes the JSON report if asked.
pub fn run(args: &TcpEchoArgs) -> Result<(), BenchError> {
    let results = measure(args)?;
    println!(
        "probe tcp-echo ({} client, {} B messages): {:.3} GB/s one-way, {:.3} GB/s round-trip \
         over {:.2} s, {:.3} server enters/message",
        args.client.name(),
        args.message_bytes,
        results.one_way_gb_per_s,
        results.round_trip_gb_per_s,
        results.elapsed_s,
        results.server_enter_calls_per_message,
    );
    let report = Report {
        probe: "tcp-echo",
        parameters: args,
        results,
        machine: MachineInfo::gather(None),
    };
    report.write_json(args.json.as_deref())
}

/// Runs the probe and returns what it measured (nothing printed).
pub fn measure(args: &TcpEchoArgs) -> Result<TcpEchoResults, BenchError> {
    if args.message_bytes == 0 || args.message_bytes > 8 << 20 || args.seconds <= 0.0 {
        return Err(BenchError::InvalidArguments(
            "--message-bytes must be in 1..=8MiB and --seconds positive".into(),
        ));
    }
    let (outcome, enter_calls) = match args.client {
        ClientPlacement::SameShard => rt::block_on(run_same_shard(args.clone()))??,
        ClientPlacement::Thread => run_client_thread(args)?,
    };
    if outcome.received_bytes != outcome.sent_bytes {
        return Err(BenchError::io(
            format!(
                "echo returned {} of {} bytes",
                outcome.received_bytes, outcome.sent_bytes
            ),
            std::io::ErrorKind::UnexpectedEof.into(),
        ));
    }
    Ok(results(args, &outcome, enter_calls))
}

fn results(args: &TcpEchoArgs, outcome: &ClientOutcome, enter_calls: u64) -> TcpEchoResults {
    let elapsed_s = outcome.elapsed.as_secs_f64();
    let messages = outcome.sent_bytes / args.message_bytes;
    TcpEchoResults {
        payload_bytes: outcome.sent_bytes,
        messages,
        elapsed_s,
        one_way_gb_per_s: gb_per_s(outcome.sent_bytes, elapsed_s),
        round_trip_gb_per_s: gb_per_s(2 * outcome.sent_bytes, elapsed_s),
        server_enter_calls_per_message: enter_calls as f64 / messages.max(1) as f64,
    }
}

fn bind_loopback() -> Result<TcpListener, BenchError> {
    TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .context(|| "binding 127.0.0.1".into())
}

/// Server and client on one executor; returns the client's outcome and the enter calls.
async fn run_same_shard(args: TcpEchoArgs) -> Result<(ClientOutcome, u64), BenchError> {
    let listener = bind_loopback()?;
    let addr = listener.local_addr();
    let enters_before = rt::driver_stats().enter_calls;
    let server = rt::spawn_local(serve_one(listener, args.message_bytes as usize));
    let outcome = run_client(addr, args.message_bytes as usize, args.seconds).await?;
    server.await??;
    Ok((outcome, rt::driver_stats().enter_calls - enters_before))
}

/// Server on this thread, client on a second thread with its own runtime.
fn run_client_thread(args: &TcpEchoArgs) -> Result<(ClientOutcome, u64), BenchError> {
    let listener = bind_loopback()?;
    let addr = listener.local_addr();
    let message_bytes = args.message_bytes as usize;
    let seconds = args.seconds;
    let client = std::thread::Builder::new()
        .name("tcp-echo-client".into())
        .spawn(move || rt::block_on(run_client(addr, message_bytes, seconds)))
        .context(|| "starting the client thread".into())?;
    let enter_calls = rt::block_on(async move {
        let enters_before = rt::driver_stats().enter_calls;
        serve_one(listener, message_bytes).await?;
        Ok::<_, BenchError>(rt::driver_stats().enter_calls - enters_before)
    })??;
    let outcome = client
        .join()
        .map_err(|_| BenchError::ThreadPanicked("tcp-echo client"))???;
    Ok((outcome, enter_calls))
}

/// Accepts one connection and echoes it until the peer shuts its sending side.
async fn serve_one(listener: TcpListener, message_bytes: usize) -> Result<(), BenchError> {
    let stream = listener.accept().await.context(|| "accepting".into())?;
    let mut buf = rt::buf_pool().get(message_bytes);
    loop {
        buf.clear();
        let (result, returned) = stream.recv(buf).await;
        buf = returned;
        if result.context(|| "server receiving".into())? == 0 {
            break;
        }
        let (result, returned) = stream.send_all(buf).await;
        buf = returned;
        result.context(|| "server sending".into())?;
    }
    stream
        .shutdown(Shutdown::Write)
        .context(|| "server shutting down".into())
}

/// Connects, sends for `seconds` from one task while receiving the echo in this one.
async fn run_client(
    addr: SocketAddr,
    message_bytes: usize,
    seconds: f64,
) -> Result<ClientOutcome, BenchError> {
    let stream = TcpStream::connect(addr)
        .await
        .context(|| format!("connecting to {addr}"))?;
    let start = Instant::now();
    let duration = Duration::from_secs_f64(seconds);
    let sender = rt::spawn_local(send_for(stream.clone(), message_bytes, duration));
    let received_bytes = receive_until_closed(&stream, message_bytes).await?;
    let sent_bytes = sender.await??;
    Ok(ClientOutcome {
        sent_bytes,
        received_bytes,
        elapsed: start.elapsed(),
    })
}

/// Sends one reused buffer over and over for `duration`, then shuts the sending side.
async fn send_for(
    stream: TcpStream,
    message_bytes: usize,
    duration: Duration,
) -> Result<u64, BenchError> {
    let mut buf = rt::buf_pool().get(message_bytes);
    buf.set_len(message_bytes);
    let start = Instant::now();
    let mut sent_bytes = 0u64;
    while start.elapsed() < duration {
        let (result, returned) = stream.send_all(buf).await;
        buf = returned;
        result.context(|| "client sending".into())?;
        sent_bytes += message_bytes as u64;
    }
    stream
        .shutdown(Shutdown::Write)
        .context(|| "client shutting down".into())?;
    Ok(sent_bytes)
}

/// Receives until the peer closes; returns the bytes received.
async fn receive_until_closed(stream: &TcpStream, message_bytes: usize) -> Result<u64, BenchError> {
    let mut buf = rt::buf_pool().get(message_bytes);
    let mut received_bytes = 0u64;
    loop {
        buf.clear();
        let (result, returned) = stream.recv(buf).await;
        buf = returned;
        match result.context(|| "client receiving".into())? {
            0 => return Ok(received_bytes),
            count => received_bytes += count as u64,
        }
    }
}
