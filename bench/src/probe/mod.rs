//! Probes of the machine's limits, measured the way the engine works: through the
//! runtime's ring, executor and buffer pool. Each probe has its own module with its
//! arguments, its results and its `run`.

pub mod nop;
pub mod tcp_echo;
pub mod write;

use clap::Subcommand;

use crate::error::BenchError;

/// `ringlog-bench probe …`.
#[derive(Debug, Subcommand)]
pub enum Probe {
    /// Sequential writes to a new file through the runtime (buffered or O_DIRECT).
    Write(write::WriteArgs),
    /// Round-trip cost of a no-op operation through the executor and the driver.
    Nop(nop::NopArgs),
    /// TCP echo over loopback: payload GB/s one-way and round-trip.
    TcpEcho(tcp_echo::TcpEchoArgs),
}

impl Probe {
    /// Runs the chosen probe.
    pub fn run(&self) -> Result<(), BenchError> {
        match self {
            Probe::Write(args) => write::run(args),
            Probe::Nop(args) => nop::run(args),
            Probe::TcpEcho(args) => tcp_echo::run(args),
        }
    }
}
