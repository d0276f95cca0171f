//! One module per Kafka API the broker answers.

pub mod api_versions;
pub mod cluster;
pub mod configs;
pub mod fetch;
pub mod groups;
pub mod init_producer_id;
pub mod list_offsets;
pub mod metadata;
pub mod offset_for_leader_epoch;
pub mod offsets;
pub mod produce;
pub mod reassignments;
pub mod records;
pub mod topics;
