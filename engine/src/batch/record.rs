//! Decoding of the records inside an uncompressed `RecordBatch` v2, for tools and tests.
//!
//! The write path never needs a record's contents; it only needs to know that the records
//! section of an uncompressed batch is well formed and holds `recordCount` records, which
//! `count_records` checks without allocating. `Records` yields borrowed views of each record.
//!
//! Invariants: every length and count read from the bytes is checked against the bytes that
//! remain before it is used; nothing here panics or allocates in proportion to a count taken
//! from the input (only to bytes actually present).
//!
//! Record layout (varints are zigzag, as in protobuf; varint = 32-bit, varlong = 64-bit):
//!
//! | field           | encoding                    | notes                                |
//! | --------------- | --------------------------- | ------------------------------------ |
//! | length          | varint                      | bytes of the record after this field |
//! | attributes      | i8                          | unused by Kafka, carried as is       |
//! | timestampDelta  | varlong                     | record time - baseTimestamp          |
//! | offsetDelta     | varint                      | record offset - baseOffset           |
//! | keyLength       | varint                      | -1 for a null key                    |
//! | key             | keyLength bytes             |                                      |
//! | valueLength     | varint                      | -1 for a null value (tombstone)      |
//! | value           | valueLength bytes           |                                      |
//! | headerCount     | varint                      | ≥ 0                                  |
//! | headers         | headerCount × header        |                                      |
//!
//! | header field    | encoding                    | notes                                |
//! | --------------- | --------------------------- | ------------------------------------ |
//! | keyLength       | varint                      | ≥ 0 (a header key is never null)     |
//! | key             | keyLength bytes             | a UTF-8 string in Kafka's API        |
//! | valueLength     | varint                      | -1 for a null value                  |
//! | value           | valueLength bytes           |                                      |

use super::error::{BatchError, RecordError};

/// The fewest bytes one header can take: two one-byte lengths.
const HEADER_BYTES_MIN: usize = 2;

/// One record header: a key (never null) and an optional value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header<'a> {
    pub key: &'a [u8],
    pub value: Option<&'a [u8]>,
}

/// One record of an uncompressed batch, borrowing from the batch's bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    /// The record's attributes byte, unused by Kafka.
    pub attributes: i8,
    /// Record timestamp minus the batch's `baseTimestamp` (`CreateTime` batches).
    pub timestamp_delta: i64,
    /// Record offset minus the batch's `baseOffset`.
    pub offset_delta: i32,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    /// Empty (and not allocated) for a record without headers.
    pub headers: Vec<Header<'a>>,
}

/// Iterator over the records of an uncompressed batch; see `RecordBatch::records`.
///
/// Yields `Err` at most once, for the first malformed record, and then ends.
#[derive(Clone, Debug)]
pub struct Records<'a> {
    reader: Reader<'a>,
    index: usize,
    failed: bool,
}

impl<'a> Records<'a> {
    pub(crate) fn new(section: &'a [u8]) -> Records<'a> {
        Records {
            reader: Reader::new(section),
            index: 0,
            failed: false,
        }
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<Record<'a>, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.reader.is_empty() {
            return None;
        }
        let mut headers = Vec::new();
        let decoded = decode_record(&mut self.reader, |header| headers.push(header));
        let index = self.index;
        self.index += 1;
        match decoded {
            Ok(fields) => Some(Ok(fields.into_record(headers))),
            Err(source) => {
                self.failed = true;
                Some(Err(BatchError::InvalidRecord { index, source }))
            }
        }
    }
}

/// Walks a records section to its end and returns how many well-formed records it holds.
pub(crate) fn count_records(section: &[u8]) -> Result<usize, BatchError> {
    let mut reader = Reader::new(section);
    let mut count = 0;
    while !reader.is_empty() {
        decode_record(&mut reader, |_| {}).map_err(|source| BatchError::InvalidRecord {
            index: count,
            source,
        })?;
        count += 1;
    }
    Ok(count)
}

/// A decoded record without its headers, which went to the caller's sink.
struct RecordFields<'a> {
    attributes: i8,
    timestamp_delta: i64,
    offset_delta: i32,
    key: Option<&'a [u8]>,
    value: Option<&'a [u8]>,
}

impl<'a> RecordFields<'a> {
    fn into_record(self, headers: Vec<Header<'a>>) -> Record<'a> {
        Record {
            attributes: self.attributes,
            timestamp_delta: self.timestamp_delta,
            offset_delta: self.offset_delta,
            key: self.key,
            value: self.value,
            headers,
        }
    }
}

/// Decodes the record at the front of `reader`, handing each header to `on_header`, so that
/// counting records and collecting them share one decoder.
fn decode_record<'a>(
    reader: &mut Reader<'a>,
    mut on_header: impl FnMut(Header<'a>),
) -> Result<RecordFields<'a>, RecordError> {
    let declared = reader.length("record length")?;
    let mut body = Reader::new(reader.take("record", declared)?);
    let fields = RecordFields {
        attributes: body.i8("record attributes")?,
        timestamp_delta: body.varlong("timestampDelta")?,
        offset_delta: body.varint("offsetDelta")?,
        key: body.nullable_bytes("key length", "key")?,
        value: body.nullable_bytes("value length", "value")?,
    };
    let header_count = body.length("header count")?;
    if header_count > body.remaining() / HEADER_BYTES_MIN {
        return Err(RecordError::Truncated {
            field: "headers",
            need: header_count.saturating_mul(HEADER_BYTES_MIN),
            have: body.remaining(),
        });
    }
    for _ in 0..header_count {
        let key_len = body.length("header key length")?;
        let key = body.take("header key", key_len)?;
        let value = body.nullable_bytes("header value length", "header value")?;
        on_header(Header { key, value });
    }
    if !body.is_empty() {
        let consumed = declared - body.remaining();
        return Err(RecordError::SizeMismatch { declared, consumed });
    }
    Ok(fields)
}

/// A cursor over untrusted bytes; every read is bounds-checked.
#[derive(Clone, Debug)]
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes }
    }

    fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    fn remaining(&self) -> usize {
        self.bytes.len()
    }

    fn take(&mut self, field: &'static str, len: usize) -> Result<&'a [u8], RecordError> {
        let have = self.bytes.len();
        if len > have {
            return Err(RecordError::Truncated {
                field,
                need: len,
                have,
            });
        }
        let (taken, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        Ok(taken)
    }

    fn i8(&mut self, field: &'static str) -> Result<i8, RecordError> {
        let byte = self.take(field, 1)?;
        Ok(i8::from_be_bytes([byte[0]]))
    }

    /// Reads an unsigned LEB128 value of at most `bits` bits.
    fn unsigned(&mut self, field: &'static str, bits: u32) -> Result<u64, RecordError> {
        let mut value: u64 = 0;
        let mut shift: u32 = 0;
        for (read, &byte) in self.bytes.iter().enumerate() {
            let low = u64::from(byte & 0x7f);
            // Reject bytes past the type's width and high bits that would be shifted out,
            // rather than silently dropping them.
            if shift >= bits || (bits - shift < 7 && low >> (bits - shift) != 0) {
                return Err(RecordError::VarintOverflow { field });
            }
            value |= low << shift;
            if byte & 0x80 == 0 {
                self.bytes = &self.bytes[read + 1..];
                return Ok(value);
            }
            shift += 7;
        }
        let have = self.bytes.len();
        Err(RecordError::Truncated {
            field,
            need: have + 1,
            have,
        })
    }

    fn varint(&mut self, field: &'static str) -> Result<i32, RecordError> {
        let raw = self.unsigned(field, 32)? as u32;
        Ok((raw >> 1) as i32 ^ -((raw & 1) as i32))
    }

    fn varlong(&mut self, field: &'static str) -> Result<i64, RecordError> {
        let raw = self.unsigned(field, 64)?;
        Ok((raw >> 1) as i64 ^ -((raw & 1) as i64))
    }

    /// Reads a varint that must be a length or count (≥ 0).
    fn length(&mut self, field: &'static str) -> Result<usize, RecordError> {
        let value = self.varint(field)?;
        usize::try_from(value).map_err(|_| RecordError::InvalidLength { field, value })
    }

    /// Reads a varint length (-1 for null) and the bytes it announces.
    fn nullable_bytes(
        &mut self,
        len_field: &'static str,
        field: &'static str,
    ) -> Result<Option<&'a [u8]>, RecordError> {
        match self.varint(len_field)? {
            -1 => Ok(None),
            value => {
                let len = usize::try_from(value).map_err(|_| RecordError::InvalidLength {
                    field: len_field,
                    value,
                })?;
                self.take(field, len).map(Some)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint_of(bytes: &[u8]) -> Result<i32, RecordError> {
        Reader::new(bytes).varint("v")
    }

    fn varlong_of(bytes: &[u8]) -> Result<i64, RecordError> {
        Reader::new(bytes).varlong("v")
    }

    #[test]
    fn zigzag_varints_decode_as_kafka_encodes_them() {
        assert_eq!(varint_of(&[0x00]), Ok(0));
        assert_eq!(varint_of(&[0x01]), Ok(-1));
        assert_eq!(varint_of(&[0x02]), Ok(1));
        assert_eq!(varint_of(&[0xac, 0x02]), Ok(150));
        assert_eq!(varint_of(&[0xfe, 0xff, 0xff, 0xff, 0x0f]), Ok(i32::MAX));
        assert_eq!(varint_of(&[0xff, 0xff, 0xff, 0xff, 0x0f]), Ok(i32::MIN));
        let max = [0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert_eq!(varlong_of(&max), Ok(i64::MAX));
    }

    #[test]
    fn overlong_and_truncated_varints_are_errors() {
        // A sixth byte, and a fifth byte carrying bits beyond 32.
        let six = [0x80, 0x80, 0x80, 0x80, 0x80, 0x00];
        assert_eq!(
            varint_of(&six),
            Err(RecordError::VarintOverflow { field: "v" })
        );
        let wide = [0xff, 0xff, 0xff, 0xff, 0x1f];
        assert_eq!(
            varint_of(&wide),
            Err(RecordError::VarintOverflow { field: "v" })
        );
        let eleven = [0x80; 11];
        assert_eq!(
            varlong_of(&eleven),
            Err(RecordError::VarintOverflow { field: "v" })
        );
        let truncated = Err(RecordError::Truncated {
            field: "v",
            need: 3,
            have: 2,
        });
        assert_eq!(varint_of(&[0x80, 0x80]), truncated);
        let empty = Err(RecordError::Truncated {
            field: "v",
            need: 1,
            have: 0,
        });
        assert_eq!(varint_of(&[]), empty);
    }

    /// length 8, attributes 0, ts 0, offset 0, key null, value "hi", 0 headers.
    const ONE_RECORD: [u8; 9] = [0x10, 0, 0, 0, 0x01, 0x04, b'h', b'i', 0];

    #[test]
    fn decodes_a_hand_written_record() {
        let records: Vec<_> = Records::new(&ONE_RECORD).collect();
        let expected = Record {
            attributes: 0,
            timestamp_delta: 0,
            offset_delta: 0,
            key: None,
            value: Some(b"hi".as_slice()),
            headers: Vec::new(),
        };
        assert_eq!(records, vec![Ok(expected)]);
        assert_eq!(count_records(&ONE_RECORD), Ok(1));
    }

    #[test]
    fn decodes_headers_with_null_values() {
        // length 10: attributes 0, ts -1, offset 1, key "k", value null, 1 header "h" -> null.
        let record = [
            0x14, 0, 0x01, 0x02, 0x02, b'k', 0x01, 0x02, 0x02, b'h', 0x01,
        ];
        let decoded: Vec<_> = Records::new(&record).collect();
        let expected = Record {
            attributes: 0,
            timestamp_delta: -1,
            offset_delta: 1,
            key: Some(b"k".as_slice()),
            value: None,
            headers: vec![Header {
                key: b"h",
                value: None,
            }],
        };
        assert_eq!(decoded, vec![Ok(expected)]);
    }

    #[test]
    fn lengths_past_the_end_negative_or_inconsistent_are_errors() {
        let mut value_too_long = ONE_RECORD;
        value_too_long[5] = 0x08; // value length 4, but the record ends after 2 more bytes
        assert!(matches!(
            count_records(&value_too_long),
            Err(BatchError::InvalidRecord {
                index: 0,
                source: RecordError::Truncated { .. }
            })
        ));
        let mut negative_key = ONE_RECORD;
        negative_key[4] = 0x03; // key length -2
        let expected = RecordError::InvalidLength {
            field: "key length",
            value: -2,
        };
        assert_eq!(
            count_records(&negative_key),
            Err(BatchError::InvalidRecord {
                index: 0,
                source: expected
            })
        );
        let mut longer = ONE_RECORD.to_vec();
        longer[0] = 0x12; // declares 9 bytes; fields take 8
        longer.push(0);
        let expected = RecordError::SizeMismatch {
            declared: 9,
            consumed: 8,
        };
        assert_eq!(
            count_records(&longer),
            Err(BatchError::InvalidRecord {
                index: 0,
                source: expected
            })
        );
        let mut many_headers = ONE_RECORD;
        many_headers[8] = 0x7e; // 63 headers in 0 bytes
        let headers_missing = RecordError::Truncated {
            field: "headers",
            need: 126,
            have: 0,
        };
        assert_eq!(
            count_records(&many_headers),
            Err(BatchError::InvalidRecord {
                index: 0,
                source: headers_missing
            })
        );
    }

    #[test]
    fn iterator_reports_the_failing_index_once_then_ends() {
        let mut two = ONE_RECORD.to_vec();
        two.extend_from_slice(&ONE_RECORD[..4]);
        let mut records = Records::new(&two);
        assert!(matches!(records.next(), Some(Ok(_))));
        assert!(matches!(
            records.next(),
            Some(Err(BatchError::InvalidRecord { index: 1, .. }))
        ));
        assert!(records.next().is_none());
    }
}
