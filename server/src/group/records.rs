//! Group metadata and committed offsets as records of `__consumer_offsets`, in Kafka's own
//! key and value formats (so Kafka's tools could read the topic), big-endian as Kafka's
//! formats are. Strings are an `i16` length and UTF-8 bytes (`-1` for a null string);
//! bytes are an `i32` length and the bytes. A record with a null value (a tombstone)
//! deletes its key.
//!
//! Keys:
//!
//! | key version | fields |
//! | --- | --- |
//! | 0, 1 (offset commit) | `version: i16`, `group: string`, `topic: string`, `partition: i32` |
//! | 2 (group metadata) | `version: i16`, `group: string` |
//!
//! Offset commit value (written at version 3; versions 0–3 are read):
//!
//! | field | versions |
//! | --- | --- |
//! | `version: i16` | all |
//! | `offset: i64` | all |
//! | `leader_epoch: i32` | 3 |
//! | `metadata: string` | all |
//! | `commit_timestamp: i64` | all |
//! | `expire_timestamp: i64` | 1 only (ignored) |
//!
//! Group metadata value (written at version 3; versions 0–3 are read):
//!
//! | field | versions |
//! | --- | --- |
//! | `version: i16` | all |
//! | `protocol_type: string` | all |
//! | `generation: i32` | all |
//! | `protocol: nullable string` | all |
//! | `leader: nullable string` | all |
//! | `current_state_timestamp: i64` | 2, 3 |
//! | `members: i32 count`, then per member: | all |
//! | — `member_id: string` | all |
//! | — `group_instance_id: nullable string` | 3 |
//! | — `client_id: string`, `client_host: string` | all |
//! | — `rebalance_timeout: i32` | 1–3 |
//! | — `session_timeout: i32` | all |
//! | — `subscription: bytes`, `assignment: bytes` | all |
//!
//! Decoding trusts no length: every string, byte array and member count is checked
//! against what is left of the record before it is read, and anything that does not
//! decode is an error naming what was wrong (the caller skips the record with a warning).

use bytes::{BufMut, Bytes, BytesMut};

/// The key version of an offset commit record ringlog writes.
const OFFSET_KEY_VERSION: i16 = 1;
/// The key version of a group metadata record.
const GROUP_KEY_VERSION: i16 = 2;
const OFFSET_VALUE_VERSION: i16 = 3;
const GROUP_VALUE_VERSION: i16 = 3;
/// Bytes of the smallest possible member entry (empty strings and byte arrays).
const MEMBER_BYTES_MIN: usize = 2 + 2 + 2 + 4 + 4 + 4;

/// A record key of `__consumer_offsets`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RecordKey {
    Offset {
        group: String,
        topic: String,
        partition: i32,
    },
    Group {
        group: String,
    },
}

impl RecordKey {
    /// The group the record belongs to.
    pub fn group(&self) -> &str {
        match self {
            RecordKey::Offset { group, .. } | RecordKey::Group { group } => group,
        }
    }
}

/// A committed offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetValue {
    pub offset: i64,
    /// `-1` when the client did not say.
    pub leader_epoch: i32,
    pub metadata: String,
    pub commit_timestamp_ms: i64,
}

/// A group's membership after a completed rebalance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupValue {
    pub protocol_type: String,
    pub generation: i32,
    pub protocol: Option<String>,
    pub leader: Option<String>,
    pub state_timestamp_ms: i64,
    pub members: Vec<MemberValue>,
}

/// One member in a [`GroupValue`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberValue {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub rebalance_timeout_ms: i32,
    pub session_timeout_ms: i32,
    pub subscription: Bytes,
    pub assignment: Bytes,
}

/// Why a record of `__consumer_offsets` did not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    #[error("{what} needs {needed} bytes, {left} left")]
    Truncated {
        what: &'static str,
        needed: usize,
        left: usize,
    },
    #[error("{what} has negative length {len}")]
    NegativeLength { what: &'static str, len: i64 },
    #[error("{what} is not UTF-8")]
    NotUtf8 { what: &'static str },
    #[error("unknown {what} version {version}")]
    UnknownVersion { what: &'static str, version: i16 },
    #[error("{left} bytes left over after the {what}")]
    Trailing { what: &'static str, left: usize },
}

pub fn encode_key(key: &RecordKey) -> Bytes {
    let mut out = BytesMut::new();
    match key {
        RecordKey::Offset {
            group,
            topic,
            partition,
        } => {
            out.put_i16(OFFSET_KEY_VERSION);
            put_string(&mut out, group);
            put_string(&mut out, topic);
            out.put_i32(*partition);
        }
        RecordKey::Group { group } => {
            out.put_i16(GROUP_KEY_VERSION);
            put_string(&mut out, group);
        }
    }
    out.freeze()
}

pub fn decode_key(bytes: &[u8]) -> Result<RecordKey, RecordError> {
    let mut reader = Reader { bytes };
    let version = reader.i16("key version")?;
    let key = match version {
        0 | 1 => RecordKey::Offset {
            group: reader.string("group")?,
            topic: reader.string("topic")?,
            partition: reader.i32("partition")?,
        },
        2 => RecordKey::Group {
            group: reader.string("group")?,
        },
        version => {
            return Err(RecordError::UnknownVersion {
                what: "key",
                version,
            })
        }
    };
    reader.finish("key")?;
    Ok(key)
}

pub fn encode_offset(value: &OffsetValue) -> Bytes {
    let mut out = BytesMut::new();
    out.put_i16(OFFSET_VALUE_VERSION);
    out.put_i64(value.offset);
    out.put_i32(value.leader_epoch);
    put_string(&mut out, &value.metadata);
    out.put_i64(value.commit_timestamp_ms);
    out.freeze()
}

pub fn decode_offset(bytes: &[u8]) -> Result<OffsetValue, RecordError> {
    let mut reader = Reader { bytes };
    let version = reader.i16("offset value version")?;
    if !(0..=3).contains(&version) {
        return Err(RecordError::UnknownVersion {
            what: "offset value",
            version,
        });
    }
    let offset = reader.i64("offset")?;
    let leader_epoch = if version >= 3 {
        reader.i32("leader epoch")?
    } else {
        -1
    };
    let metadata = reader.string("metadata")?;
    let commit_timestamp_ms = reader.i64("commit timestamp")?;
    if version == 1 {
        reader.i64("expire timestamp")?;
    }
    reader.finish("offset value")?;
    Ok(OffsetValue {
        offset,
        leader_epoch,
        metadata,
        commit_timestamp_ms,
    })
}

pub fn encode_group(value: &GroupValue) -> Bytes {
    let mut out = BytesMut::new();
    out.put_i16(GROUP_VALUE_VERSION);
    put_string(&mut out, &value.protocol_type);
    out.put_i32(value.generation);
    put_nullable_string(&mut out, value.protocol.as_deref());
    put_nullable_string(&mut out, value.leader.as_deref());
    out.put_i64(value.state_timestamp_ms);
    out.put_i32(value.members.len() as i32);
    for member in &value.members {
        put_string(&mut out, &member.member_id);
        put_nullable_string(&mut out, member.instance_id.as_deref());
        put_string(&mut out, &member.client_id);
        put_string(&mut out, &member.client_host);
        out.put_i32(member.rebalance_timeout_ms);
        out.put_i32(member.session_timeout_ms);
        put_bytes(&mut out, &member.subscription);
        put_bytes(&mut out, &member.assignment);
    }
    out.freeze()
}

pub fn decode_group(bytes: &[u8]) -> Result<GroupValue, RecordError> {
    let mut reader = Reader { bytes };
    let version = reader.i16("group value version")?;
    if !(0..=3).contains(&version) {
        return Err(RecordError::UnknownVersion {
            what: "group value",
            version,
        });
    }
    let protocol_type = reader.string("protocol type")?;
    let generation = reader.i32("generation")?;
    let protocol = reader.nullable_string("protocol")?;
    let leader = reader.nullable_string("leader")?;
    let state_timestamp_ms = if version >= 2 {
        reader.i64("state timestamp")?
    } else {
        -1
    };
    let count = reader.length("member count", MEMBER_BYTES_MIN)?;
    let mut members = Vec::with_capacity(count);
    for _ in 0..count {
        members.push(decode_member(&mut reader, version)?);
    }
    reader.finish("group value")?;
    Ok(GroupValue {
        protocol_type,
        generation,
        protocol,
        leader,
        state_timestamp_ms,
        members,
    })
}

fn decode_member(reader: &mut Reader<'_>, version: i16) -> Result<MemberValue, RecordError> {
    let member_id = reader.string("member id")?;
    let instance_id = if version >= 3 {
        reader.nullable_string("group instance id")?
    } else {
        None
    };
    let client_id = reader.string("client id")?;
    let client_host = reader.string("client host")?;
    // Version 0 had one timeout for both.
    let rebalance_timeout_ms = if version >= 1 {
        Some(reader.i32("rebalance timeout")?)
    } else {
        None
    };
    let session_timeout_ms = reader.i32("session timeout")?;
    Ok(MemberValue {
        member_id,
        instance_id,
        client_id,
        client_host,
        rebalance_timeout_ms: rebalance_timeout_ms.unwrap_or(session_timeout_ms),
        session_timeout_ms,
        subscription: reader.bytes("subscription")?,
        assignment: reader.bytes("assignment")?,
    })
}

fn put_string(out: &mut BytesMut, text: &str) {
    // Group ids, topics, member ids and metadata are bounded far below i16::MAX by the
    // request decoder (their wire form has the same i16 length).
    out.put_i16(text.len() as i16);
    out.put_slice(text.as_bytes());
}

fn put_nullable_string(out: &mut BytesMut, text: Option<&str>) {
    match text {
        Some(text) => put_string(out, text),
        None => out.put_i16(-1),
    }
}

fn put_bytes(out: &mut BytesMut, bytes: &[u8]) {
    out.put_i32(bytes.len() as i32);
    out.put_slice(bytes);
}

/// A cursor over a record's bytes that checks every read against what is left.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl Reader<'_> {
    fn take(&mut self, what: &'static str, needed: usize) -> Result<&[u8], RecordError> {
        if self.bytes.len() < needed {
            return Err(RecordError::Truncated {
                what,
                needed,
                left: self.bytes.len(),
            });
        }
        let (head, rest) = self.bytes.split_at(needed);
        self.bytes = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], RecordError> {
        let mut array = [0; N];
        array.copy_from_slice(self.take(what, N)?);
        Ok(array)
    }

    fn i16(&mut self, what: &'static str) -> Result<i16, RecordError> {
        self.array(what).map(i16::from_be_bytes)
    }

    fn i32(&mut self, what: &'static str) -> Result<i32, RecordError> {
        self.array(what).map(i32::from_be_bytes)
    }

    fn i64(&mut self, what: &'static str) -> Result<i64, RecordError> {
        self.array(what).map(i64::from_be_bytes)
    }

    /// A count or length of items of at least `item_bytes_min` bytes each, checked against
    /// what is left before anything is allocated for it.
    fn length(&mut self, what: &'static str, item_bytes_min: usize) -> Result<usize, RecordError> {
        let len = self.i32(what)?;
        let len = usize::try_from(len).map_err(|_| RecordError::NegativeLength {
            what,
            len: i64::from(len),
        })?;
        let needed = len.saturating_mul(item_bytes_min);
        if needed > self.bytes.len() {
            return Err(RecordError::Truncated {
                what,
                needed,
                left: self.bytes.len(),
            });
        }
        Ok(len)
    }

    fn nullable_string(&mut self, what: &'static str) -> Result<Option<String>, RecordError> {
        let len = self.i16(what)?;
        if len == -1 {
            return Ok(None);
        }
        let len = usize::try_from(len).map_err(|_| RecordError::NegativeLength {
            what,
            len: i64::from(len),
        })?;
        let bytes = self.take(what, len)?;
        let text = std::str::from_utf8(bytes).map_err(|_| RecordError::NotUtf8 { what })?;
        Ok(Some(text.to_owned()))
    }

    fn string(&mut self, what: &'static str) -> Result<String, RecordError> {
        self.nullable_string(what)?
            .ok_or(RecordError::NegativeLength { what, len: -1 })
    }

    fn bytes(&mut self, what: &'static str) -> Result<Bytes, RecordError> {
        let len = self.length(what, 1)?;
        Ok(Bytes::copy_from_slice(self.take(what, len)?))
    }

    fn finish(&self, what: &'static str) -> Result<(), RecordError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(RecordError::Trailing {
                what,
                left: self.bytes.len(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group_value() -> GroupValue {
        GroupValue {
            protocol_type: "consumer".into(),
            generation: 7,
            protocol: Some("range".into()),
            leader: Some("m-1".into()),
            state_timestamp_ms: 1_700_000_000_000,
            members: vec![MemberValue {
                member_id: "m-1".into(),
                instance_id: Some("static-1".into()),
                client_id: "c".into(),
                client_host: "/127.0.0.1".into(),
                rebalance_timeout_ms: 300_000,
                session_timeout_ms: 10_000,
                subscription: Bytes::from_static(b"sub"),
                assignment: Bytes::from_static(b"assigned"),
            }],
        }
    }

    #[test]
    fn keys_and_values_round_trip() {
        for key in [
            RecordKey::Offset {
                group: "g".into(),
                topic: "orders".into(),
                partition: 3,
            },
            RecordKey::Group { group: "g".into() },
        ] {
            assert_eq!(decode_key(&encode_key(&key)).unwrap(), key);
        }
        let offset = OffsetValue {
            offset: 42,
            leader_epoch: 5,
            metadata: "meta".into(),
            commit_timestamp_ms: 99,
        };
        assert_eq!(decode_offset(&encode_offset(&offset)).unwrap(), offset);
        let group = group_value();
        assert_eq!(decode_group(&encode_group(&group)).unwrap(), group);
    }

    #[test]
    fn the_offset_key_is_kafkas_byte_layout() {
        let key = RecordKey::Offset {
            group: "g".into(),
            topic: "t".into(),
            partition: 258,
        };
        assert_eq!(
            encode_key(&key).as_ref(),
            [0, 1, 0, 1, b'g', 0, 1, b't', 0, 0, 1, 2]
        );
    }

    #[test]
    fn older_offset_values_are_read() {
        // Version 1: offset, metadata, commit timestamp, expire timestamp.
        let mut v1 = BytesMut::new();
        v1.put_i16(1);
        v1.put_i64(10);
        put_string(&mut v1, "m");
        v1.put_i64(20);
        v1.put_i64(30);
        let value = decode_offset(&v1).unwrap();
        assert_eq!((value.offset, value.leader_epoch), (10, -1));
        assert_eq!(value.commit_timestamp_ms, 20);
    }

    #[test]
    fn every_truncation_and_absurd_count_is_an_error_not_a_panic() {
        let encoded = encode_group(&group_value());
        for len in 0..encoded.len() {
            let refused = decode_group(&encoded[..len]);
            assert!(
                matches!(refused, Err(RecordError::Truncated { needed, left, .. }) if left < needed),
                "prefix of {len} bytes: {refused:?}"
            );
        }
        let mut absurd = BytesMut::new();
        absurd.put_i16(3);
        put_string(&mut absurd, "consumer");
        absurd.put_i32(1);
        absurd.put_i16(-1);
        absurd.put_i16(-1);
        absurd.put_i64(0);
        absurd.put_i32(i32::MAX);
        assert!(matches!(
            decode_group(&absurd),
            Err(RecordError::Truncated {
                what: "member count",
                ..
            })
        ));
        let mut trailing = encode_key(&RecordKey::Group { group: "g".into() }).to_vec();
        trailing.push(0);
        assert!(matches!(
            decode_key(&trailing),
            Err(RecordError::Trailing { .. })
        ));
        assert!(matches!(
            decode_key(&[0, 9]),
            Err(RecordError::UnknownVersion { version: 9, .. })
        ));
    }
}
