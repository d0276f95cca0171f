//! `ringlog-bench e2e`: producers and consumers together, and the latency from a record's
//! send to its arrival at a consumer.
//!
//! The topic is created and its partitions' ends listed first; the consumer (its own
//! thread and runtime, `--consumer-connections` connections) then follows every partition
//! from those ends while the producer (`produce`'s native client with all its options)
//! runs. Each record carries the time its request was sent in the first 8 bytes of its
//! value (see `stamp`), on a clock the two sides share, so the latency covers the whole
//! path: request, append, group commit (and fdatasync for acks=all on a `flush=always`
//! topic, whose records become visible only once durable), fetch long-poll wake-up and
//! response. Batching time in the client (`--linger-ms` with `--rate`) is not included:
//! the stamp is taken when the batch is sent. The consumer stops when it has read as many
//! records as the producer had acknowledged.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use clap::Args;
use serde::Serialize;

use super::consume::{self, ConsumeArgs, ConsumeResults, FromArg, Until};
use super::produce::{self, ProduceArgs, ProduceResults};
use super::rdkafka::ClientArg;
use super::stamp::Clock;
use super::{create_topic, list_offsets, Target};
use crate::engine::latency::LatencySummary;
use crate::error::{BenchError, IoContext};
use crate::machine::MachineInfo;
use crate::report::Report;
use crate::size::parse_size_bytes;

/// Parameters of `e2e`: the producer's, and the consumer's connections and fetch sizes.
#[derive(Debug, Clone, Args, Serialize)]
pub struct E2eArgs {
    #[command(flatten)]
    pub produce: ProduceArgs,
    /// Consumer connections (partition *p* is read by connection *p* mod C).
    #[arg(long, default_value_t = 1)]
    pub consumer_connections: u32,
    /// `max_bytes` of each Fetch (Kafka's fetch.max.bytes).
    #[arg(long, default_value = "50MiB", value_parser = parse_size_bytes)]
    pub fetch_max_bytes: u64,
    /// `partition_max_bytes` of each partition in a Fetch.
    #[arg(long, default_value = "8MiB", value_parser = parse_size_bytes)]
    pub partition_max_bytes: u64,
}

/// What `e2e` measured: the producer's rate, the end-to-end latency per record, and both
/// sides' full results.
#[derive(Debug, Clone, Serialize)]
pub struct E2eResults {
    /// Records produced per second (acknowledged).
    pub records_per_sec: f64,
    pub mb_per_sec: f64,
    /// From each record's send to its fetch's arrival at the consumer.
    pub latency_us: LatencySummary,
    pub produce: ProduceResults,
    pub consume: ConsumeResults,
}

/// Runs `e2e`, prints and writes its report.
pub fn run(args: &E2eArgs) -> Result<(), BenchError> {
    let target = Target::start(&args.produce.target)?;
    let results = e2e(args, &target)?;
    print_results(&results);
    target.stop()?;
    let report = Report {
        probe: "e2e",
        parameters: args,
        results,
        machine: MachineInfo::gather(Some(&args.produce.target.data_parent)),
    };
    report.write_json(args.produce.json.as_deref())
}

/// Produces to and consumes from `target` at once; checks that every acknowledged record
/// was read back.
pub fn e2e(args: &E2eArgs, target: &Target) -> Result<E2eResults, BenchError> {
    if args.consumer_connections == 0 {
        return Err(BenchError::InvalidArguments(
            "--consumer-connections must be positive".into(),
        ));
    }
    if args.produce.client != ClientArg::Native {
        return Err(BenchError::InvalidArguments(
            "e2e stamps records with the native client only: --client does not apply".into(),
        ));
    }
    if args.produce.then_consume {
        return Err(BenchError::InvalidArguments(
            "e2e consumes while it produces: --then-consume does not apply".into(),
        ));
    }
    let topic = &args.produce.topic;
    let mut admin = target.admin()?;
    create_topic(&mut admin, topic, args.produce.partitions)?;
    let starts = list_offsets(&mut admin, topic, args.produce.partitions, false)?;
    let fetch_version = consume::fetch_version(&admin)?;
    drop(admin);
    let clock = Clock::new();
    let produced = Arc::new(AtomicU64::new(u64::MAX));
    let consumer = {
        let address = target.address;
        let consume_args = ConsumeArgs {
            target: args.produce.target.clone(),
            topic: topic.clone(),
            from: FromArg::Latest,
            fetch_max_bytes: args.fetch_max_bytes,
            partition_max_bytes: args.partition_max_bytes,
            connections: args.consumer_connections,
            expect: None,
            client: ClientArg::Native,
            json: None::<PathBuf>,
        };
        let until = Until::Published(Arc::clone(&produced));
        std::thread::Builder::new()
            .name("e2e-consume".into())
            .spawn(move || {
                consume::read(
                    address,
                    fetch_version,
                    &consume_args,
                    &starts,
                    &starts,
                    until,
                    Some(clock),
                )
            })
            .context(|| "starting the consumer thread".into())?
    };
    let produce = produce::produce_stamped(&args.produce, target, Some(clock));
    // The consumer stops at this count; a failed producer stops it at once.
    let acknowledged = produce.as_ref().map_or(0, |results| results.records);
    produced.store(acknowledged, Ordering::Release);
    let consume = consumer
        .join()
        .map_err(|_| BenchError::ThreadPanicked("e2e consumer"))?;
    let produce = produce?;
    let consume = consume?;
    if consume.records != produce.records {
        return Err(BenchError::Broker(format!(
            "read {} records, {} were acknowledged",
            consume.records, produce.records
        )));
    }
    let latency_us = consume
        .end_to_end_latency
        .ok_or_else(|| BenchError::Broker("the consumer kept no latencies".into()))?;
    Ok(E2eResults {
        records_per_sec: produce.records_per_s,
        mb_per_sec: produce.mb_per_s,
        latency_us,
        produce,
        consume,
    })
}

fn print_results(results: &E2eResults) {
    let produce = &results.produce;
    let latency = &results.latency_us;
    println!(
        "e2e: {} records in {:.2} s: {:.0} records/s, {:.1} MB/s; end-to-end latency \
         p50 {:.0} / p99 {:.0} / p99.9 {:.0} / max {:.0} us (produce p99 {:.0} us)",
        produce.records,
        produce.elapsed_s,
        results.records_per_sec,
        results.mb_per_sec,
        latency.p50_us,
        latency.p99_us,
        latency.p999_us,
        latency.max_us,
        produce.latency.p99_us,
    );
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{e2e, E2eArgs};
    use crate::broker::blackhole::{broker_behind_blackhole, within};
    use crate::broker::{parse_args, Target};
    use crate::error::BenchError;

    #[test]
    fn a_broker_that_never_answers_produce_stops_both_sides() {
        let parent = tempfile::tempdir().unwrap();
        let (target, _blackhole) = broker_behind_blackhole(parent.path()).unwrap();
        let address = target.address.to_string();
        let args: E2eArgs = parse_args(&[
            "e2e",
            "--bootstrap",
            &address,
            "--duration",
            "60",
            "--record-size",
            "64",
            "--stall-timeout-ms",
            "500",
        ])
        .unwrap();
        // The consumer must stop too: a run still going after this has hung.
        let limit = Duration::from_secs(30);
        let error = within(limit, move || e2e(&args, &target)).unwrap_err();
        assert!(matches!(error, BenchError::Stalled { .. }), "{error}");
    }

    #[test]
    fn every_record_arrives_with_a_latency() {
        let parent = tempfile::tempdir().unwrap();
        let parent = parent.path().to_str().unwrap();
        let args: E2eArgs = parse_args(&[
            "e2e",
            "--embedded",
            "--data-parent",
            parent,
            "--records",
            "3000",
            "--record-size",
            "64",
            "--batch-bytes",
            "4KiB",
            "--partitions",
            "2",
            "--rate",
            "20000",
        ])
        .unwrap();
        let target = Target::start(&args.produce.target).unwrap();
        let results = e2e(&args, &target).unwrap();
        assert_eq!(results.produce.records, 3000);
        assert_eq!(results.consume.records, 3000);
        assert_eq!(results.latency_us.count, 3000, "one latency per record");
        assert_eq!(results.produce.acks_errors, 0);
        target.stop().unwrap();
    }

    #[test]
    fn refuses_records_too_short_to_carry_a_stamp() {
        let parent = tempfile::tempdir().unwrap();
        let parent = parent.path().to_str().unwrap();
        let args: E2eArgs = parse_args(&[
            "e2e",
            "--embedded",
            "--data-parent",
            parent,
            "--records",
            "10",
            "--record-size",
            "4",
        ])
        .unwrap();
        let target = Target::start(&args.produce.target).unwrap();
        let error = e2e(&args, &target).unwrap_err();
        assert!(error.to_string().contains("at least 8"), "{error}");
        target.stop().unwrap();
    }
}
