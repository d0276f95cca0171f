//! ringlog's broker: the thin network layer between Kafka clients and the storage engine.
//!
//! For now it holds the command line of the `ringlog` binary; the Kafka listener, request
//! routing and the admin API come with the broker issue.

pub mod cli;
