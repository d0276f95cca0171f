//! What a producing run has heard back from the broker, shared by every client path (the
//! native client and librdkafka): when a record was last acknowledged, and which error
//! codes refused records from which partitions. Two checks stop a run on it, so that it
//! never prints `0 records/s` until its duration ends:
//!
//! - a refusal (an error code in a Produce response, a failed delivery report) is an acks
//!   error: the run stops, and its error names every code seen and the partitions that
//!   answered it ([`AckWatch::refused_error`]). Nothing resends a refused request.
//! - a stall: records outstanding and none acknowledged for the stall timeout
//!   ([`STALL_TIMEOUT_MS_DEFAULT`] unless a test lowers it): the run stops with an error
//!   that names the codes the same way, or says that no response arrived
//!   ([`AckWatch::stalled`]).
//!
//! A code is named as Kafka names it, with its number (`KAFKA_STORAGE_ERROR (56)`);
//! librdkafka's own failures (negative codes, such as a message timeout) keep librdkafka's
//! name.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::error::BenchError;

/// How long a run waits with records outstanding and none acknowledged before it stops.
/// Ten seconds is far beyond any acknowledgement a working broker gives (a group commit
/// with its fdatasync takes milliseconds) and short enough that a run against a broker
/// that answers nothing ends soon after it stopped answering.
pub const STALL_TIMEOUT_MS_DEFAULT: u64 = 10_000;
/// How many partitions an error lists per code before it only says how many more.
const PARTITIONS_LISTED_MAX: usize = 8;

/// The acknowledgements and refusals of one producing run; shared by its threads.
pub struct AckWatch {
    origin: Instant,
    /// When the last record was acknowledged, in nanoseconds after `origin` (0: none yet).
    last_ack_ns: AtomicU64,
    refusals: Mutex<Refusals>,
}

/// Every refusal of a run, by code.
#[derive(Default)]
struct Refusals {
    count: u64,
    /// Code → its label and the partitions that answered it.
    codes: BTreeMap<i32, (String, BTreeSet<i32>)>,
    last_code: Option<i32>,
}

impl Default for AckWatch {
    fn default() -> Self {
        AckWatch::new()
    }
}

impl AckWatch {
    /// A watch with nothing heard yet.
    pub fn new() -> AckWatch {
        AckWatch {
            origin: Instant::now(),
            last_ack_ns: AtomicU64::new(0),
            refusals: Mutex::new(Refusals::default()),
        }
    }

    /// Notes that a record (or a request's records) was acknowledged just now.
    pub fn acknowledged(&self) {
        let ns = u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last_ack_ns.fetch_max(ns.max(1), Ordering::Relaxed);
    }

    /// Notes that `partition` refused a record with a Kafka error `code`.
    pub fn refused_kafka(&self, partition: i32, code: i16) {
        self.refused(partition, i32::from(code), || kafka_label(code));
    }

    /// Notes that `partition` refused a record with `code`; `label` names the code the
    /// first time it is seen (`KAFKA_STORAGE_ERROR (56)`).
    pub fn refused(&self, partition: i32, code: i32, label: impl FnOnce() -> String) {
        let mut refusals = self.lock();
        refusals.count += 1;
        refusals.last_code = Some(code);
        let (_, partitions) = refusals
            .codes
            .entry(code)
            .or_insert_with(|| (label(), BTreeSet::new()));
        partitions.insert(partition);
    }

    /// How many refusals the run had.
    pub fn refusal_count(&self) -> u64 {
        self.lock().count
    }

    /// When a wait for an acknowledgement stalls: `timeout` after the later of the last
    /// acknowledgement and `outstanding_since` (when the awaited records were sent, or
    /// when the client last had none outstanding).
    pub fn stall_deadline(&self, outstanding_since: Instant, timeout: Duration) -> Instant {
        let last_ack = self.origin + Duration::from_nanos(self.last_ack_ns.load(Ordering::Relaxed));
        last_ack.max(outstanding_since) + timeout
    }

    /// The error of a run that stalled for `timeout`; `client_note` (may be empty) adds
    /// what the client might have hidden.
    pub fn stalled(&self, timeout: Duration, client_note: &str) -> BenchError {
        let refusals = self.lock();
        let heard = if refusals.count == 0 {
            "no response arrived in that time".to_owned()
        } else {
            format!("the broker's errors so far: {}", refusals.describe())
        };
        BenchError::Stalled {
            waited: timeout,
            heard: format!("{heard}{client_note}"),
        }
    }

    /// The error of a run that had refusals, naming their codes and partitions; `None`
    /// without refusals.
    pub fn refused_error(&self) -> Option<BenchError> {
        let refusals = self.lock();
        (refusals.count > 0).then(|| {
            BenchError::Broker(format!(
                "{} acks errors: {}",
                refusals.count,
                refusals.describe()
            ))
        })
    }

    /// A lock whose holder cannot leave the counts half-updated: a poisoned one is used.
    fn lock(&self) -> MutexGuard<'_, Refusals> {
        self.refusals.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Refusals {
    /// `KAFKA_STORAGE_ERROR (56) from partitions 0, 1 (last)`, one entry per code, the
    /// last one seen first.
    fn describe(&self) -> String {
        let last = self.last_code.into_iter();
        let others = self
            .codes
            .keys()
            .copied()
            .filter(|&c| Some(c) != self.last_code);
        let mut text = String::new();
        for code in last.chain(others) {
            let Some((label, partitions)) = self.codes.get(&code) else {
                continue;
            };
            if !text.is_empty() {
                text.push_str("; ");
            }
            // Writing to a String cannot fail.
            let _ = write!(text, "{label} from {}", list_partitions(partitions));
            if Some(code) == self.last_code && self.codes.len() > 1 {
                text.push_str(" (the last seen)");
            }
        }
        text
    }
}

/// `partition 3`, `partitions 0, 1, 2`, or the first few and how many more.
fn list_partitions(partitions: &BTreeSet<i32>) -> String {
    let listed: Vec<String> = partitions
        .iter()
        .take(PARTITIONS_LISTED_MAX)
        .map(i32::to_string)
        .collect();
    let noun = if partitions.len() == 1 {
        "partition"
    } else {
        "partitions"
    };
    let more = partitions.len().saturating_sub(PARTITIONS_LISTED_MAX);
    let more = if more > 0 {
        format!(" and {more} more")
    } else {
        String::new()
    };
    format!("{noun} {}{more}", listed.join(", "))
}

/// Kafka's name of an error code, as its tools print it, and the code:
/// `KAFKA_STORAGE_ERROR (56)`.
pub fn kafka_label(code: i16) -> String {
    format!("{} ({code})", ringlog_server::errors::name(code))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::{AckWatch, PARTITIONS_LISTED_MAX};

    const STORAGE: i16 = 56;
    const NOT_LEADER: i16 = 6;

    #[test]
    fn refusals_name_each_code_and_its_partitions_the_last_first() {
        let watch = AckWatch::new();
        assert!(watch.refused_error().is_none());
        watch.refused_kafka(3, NOT_LEADER);
        watch.refused_kafka(0, STORAGE);
        watch.refused_kafka(7, STORAGE);
        watch.refused_kafka(0, STORAGE);
        let error = watch.refused_error().unwrap().to_string();
        assert_eq!(
            error,
            "broker: 4 acks errors: KAFKA_STORAGE_ERROR (56) from partitions 0, 7 \
             (the last seen); NOT_LEADER_OR_FOLLOWER (6) from partition 3"
        );
        assert_eq!(watch.refusal_count(), 4);
    }

    #[test]
    fn many_partitions_are_counted_not_listed() {
        let watch = AckWatch::new();
        let partitions = PARTITIONS_LISTED_MAX as i32 + 5;
        for partition in 0..partitions {
            watch.refused_kafka(partition, STORAGE);
        }
        let error = watch.stalled(Duration::from_secs(10), "").to_string();
        assert!(error.contains("no record acknowledged for 10s"), "{error}");
        assert!(
            error.ends_with(
                "KAFKA_STORAGE_ERROR (56) from partitions 0, 1, 2, 3, 4, 5, 6, 7 and 5 more"
            ),
            "{error}"
        );
    }

    #[test]
    fn a_stall_without_responses_says_so() {
        let error = AckWatch::new()
            .stalled(Duration::from_secs(1), " (a note)")
            .to_string();
        assert!(
            error.ends_with("no response arrived in that time (a note)"),
            "{error}"
        );
    }

    #[test]
    fn the_stall_clock_starts_at_the_later_of_the_last_ack_and_the_send() {
        let watch = AckWatch::new();
        let timeout = Duration::from_secs(10);
        let sent = Instant::now();
        assert_eq!(watch.stall_deadline(sent, timeout), sent + timeout);
        std::thread::sleep(Duration::from_millis(2));
        watch.acknowledged();
        let deadline = watch.stall_deadline(sent, timeout);
        assert!(
            deadline > sent + timeout,
            "an acknowledgement restarts the clock"
        );
        assert!(deadline <= Instant::now() + timeout);
    }
}
