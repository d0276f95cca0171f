//! The bench's one error type: what can stop a probe, each kind keeping its cause as
//! `source()`. An io_uring that cannot be set up is an environmental stop with its own exit
//! code ([`EXIT_CODE_IO_URING_UNAVAILABLE`]); everything else exits with 1.

use std::io;
use std::time::Duration;

use ringlog_engine::batch::BatchError;
use ringlog_engine::log::LogError;
use ringlog_engine::rt::{Cancelled, RingSetupError, EXIT_CODE_IO_URING_UNAVAILABLE};
use ringlog_engine::topic::ConfigError;
use ringlog_server::admin::AdminError;
use ringlog_server::server::ServerError;

/// Why a probe stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BenchError {
    /// The runtime could not start: io_uring is unavailable or lacks a needed feature.
    #[error("io_uring is unavailable: {0}")]
    RingUnavailable(#[from] RingSetupError),
    /// An I/O operation failed; `context` says which.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    /// A task of the probe was dropped before it finished.
    #[error("a probe task was cancelled before it finished")]
    TaskCancelled(#[from] Cancelled),
    /// A probe thread panicked.
    #[error("the {0} thread panicked")]
    ThreadPanicked(&'static str),
    /// The results could not be written as JSON.
    #[error("writing the JSON report: {0}")]
    Json(#[from] serde_json::Error),
    /// The arguments do not describe a run that can be done.
    #[error("invalid arguments: {0}")]
    InvalidArguments(String),
    /// The topic configuration the arguments describe is not valid.
    #[error("topic configuration: {0}")]
    Config(#[from] ConfigError),
    /// A partition log refused an operation or failed one.
    #[error("partition log: {0}")]
    Log(#[from] LogError),
    /// The load's record batches could not be built.
    #[error("building the load's record batches: {0}")]
    Batch(#[from] BatchError),
    /// An admin request to the broker (topic creation, offsets) failed.
    #[error("admin request: {0}")]
    Admin(#[from] AdminError),
    /// The embedded broker could not start or stop.
    #[error("embedded broker: {0}")]
    Server(#[from] ServerError),
    /// The broker's answer is not what the load expects: a bad frame, a response that
    /// does not decode, a Kafka error code, a count that does not add up.
    #[error("broker: {0}")]
    Broker(String),
    /// A producing run had records outstanding and none was acknowledged for `waited`;
    /// `heard` names the broker's last error codes and partitions, or says that nothing
    /// was answered.
    #[error("broker: no record acknowledged for {waited:?} with records outstanding; {heard}")]
    Stalled { waited: Duration, heard: String },
    /// The engine returned something the bench cannot account for (a read that does not
    /// advance, a log that lost records); the message says what.
    #[error("engine result does not add up: {0}")]
    Inconsistent(String),
}

impl BenchError {
    /// An I/O error with what was being done when it happened.
    pub fn io(context: impl Into<String>, source: io::Error) -> BenchError {
        BenchError::Io {
            context: context.into(),
            source,
        }
    }

    /// The process exit status for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            BenchError::RingUnavailable(_) => EXIT_CODE_IO_URING_UNAVAILABLE,
            _ => 1,
        }
    }
}

/// Adds context to an `io::Result`.
pub trait IoContext<T> {
    fn context(self, context: impl FnOnce() -> String) -> Result<T, BenchError>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn context(self, context: impl FnOnce() -> String) -> Result<T, BenchError> {
        self.map_err(|source| BenchError::io(context(), source))
    }
}
