//! ringlog's benchmarks, as a library. `probe` measures the machine's limits through the
//! runtime (disk writes, the runtime's own per-operation cost, loopback TCP) so that the
//! engine's and the broker's numbers can be read against what the hardware allows; see
//! BENCHMARKS.md for how they are run and what they showed. `engine` measures the storage
//! engine alone (appends, reads, recovery), in process, against those limits; `produce`,
//! `consume` and `e2e` (both at once, with end-to-end latency) measure the broker over the
//! Kafka protocol; `hostile` holds a hostile client load against it meanwhile.
//!
//! The binary (`main.rs`) is a thin command line over these modules; `ringlog-tune` builds
//! its sweep on the same probes and load generator.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod broker;
pub mod engine;
pub mod error;
pub mod machine;
pub mod probe;
pub mod report;
pub mod size;
