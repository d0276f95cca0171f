//! ringlog's broker: the thin network layer between Kafka clients and the storage engine.
//!
//! - [`protocol`]: framing, request decoding, response encoding, supported versions.
//! - [`connection`]: one client connection on one shard.
//! - [`broker`] and [`handlers`]: what each Kafka API does with the engine.
//! - [`group`]: the consumer-group coordinator and committed offsets (`__consumer_offsets`).
//! - [`server`]: listeners on every shard, graceful stop; [`listen_check`]: one process
//!   per listen address.
//! - [`metrics`]: counters and histograms, served in the Prometheus text format.
//! - [`config`] and [`cli`]: `ringlog.toml` and the command line.
//! - [`limits`]: the network layer's bounds (connection buffers, requests in flight,
//!   connections per shard); [`open_files`]: the open-file limit connections count against.
//! - [`admin`]: a small Kafka admin client and the `ringlog topic` commands built on it.
//! - `fuzzing` (tests and the `fuzzing` feature): the properties the fuzz targets check.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod admin;
pub mod broker;
pub mod cli;
pub mod config;
pub mod connection;
pub mod errors;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod group;
pub mod handlers;
pub mod limits;
pub mod listen_check;
pub mod metrics;
pub mod open_files;
pub mod protocol;
pub mod server;
pub mod zero_copy;
