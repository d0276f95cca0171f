//! A minimal Kafka client over a blocking TCP socket, for the tests that need exact control:
//! a request at a chosen version, frames no real client would send, and a plain look at
//! what the broker stored.
//!
//! Requests and responses are encoded and decoded with the `kafka-protocol` crate, an
//! implementation independent of ringlog's own batch code. Record batches are built with
//! its `RecordBatchEncoder` (RecordBatch v2, uncompressed) and read back with its decoder.
//!
//! Fetch names topics by id from version 13 on. A Fetch request sent at such a version with
//! topics named only by name gets their ids from a Metadata request first, as a real
//! client's metadata cache supplies them (a topic Metadata does not know keeps the nil id);
//! a Fetch request with every id set, or at an earlier version, goes as it is.

use std::any::Any;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::produce_response::PartitionProduceResponse;
use kafka_protocol::messages::{
    ApiKey, BrokerId, CreateTopicsRequest, DeleteTopicsRequest, FetchRequest, ListOffsetsRequest,
    MetadataRequest, ProduceRequest, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, Request, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions,
    TimestampType, NO_PARTITION_LEADER_EPOCH, NO_PRODUCER_EPOCH, NO_PRODUCER_ID, NO_SEQUENCE,
};
use ringlog_server::protocol::supported;
use uuid::Uuid;

/// How long a read waits before the test gives up on the broker.
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest response frame the client accepts.
const RESPONSE_BYTES_MAX: usize = 256 << 20;

/// ListOffsets' timestamp for "the high watermark".
pub const LATEST: i64 = -1;
/// ListOffsets' timestamp for "the log start offset".
pub const EARLIEST: i64 = -2;

/// The last Fetch version that names topics by name; later ones name them by id.
pub const FETCH_BY_NAME_VERSION_MAX: i16 = 12;

/// One connection to a broker.
pub struct Connection {
    stream: TcpStream,
    correlation_id: i32,
}

impl Connection {
    pub fn connect(address: SocketAddr) -> Connection {
        Connection::try_connect(address).expect("connect to ringlog")
    }

    /// Connects to `address`, or says why not (a broker being restarted refuses).
    pub fn try_connect(address: SocketAddr) -> io::Result<Connection> {
        Connection::from_stream(TcpStream::connect(address)?)
    }

    /// A client on a socket already connected (made with other options, or held idle).
    pub fn from_stream(stream: TcpStream) -> io::Result<Connection> {
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(READ_TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(Connection {
            stream,
            correlation_id: 0,
        })
    }

    /// Sends `request` at `version` and returns the decoded response. Fails if the request
    /// cannot be encoded at that version, the connection breaks, the correlation id is
    /// wrong, or the response does not decode exactly (no bytes left over).
    pub fn call<R: Request + 'static>(
        &mut self,
        request: &R,
        version: i16,
    ) -> anyhow::Result<R::Response> {
        let api = ApiKey::try_from(R::KEY).map_err(|()| anyhow::anyhow!("API key {}", R::KEY))?;
        let correlation_id = self.send(api, version, request)?;
        self.receive::<R>(version, correlation_id)
    }

    /// Reads the next response and decodes it as the answer to the `R` request sent with
    /// `correlation_id` at `version` (see [`Connection::send`]), with the checks of
    /// [`Connection::call`].
    pub fn receive<R: Request>(
        &mut self,
        version: i16,
        correlation_id: i32,
    ) -> anyhow::Result<R::Response> {
        let api = ApiKey::try_from(R::KEY).map_err(|()| anyhow::anyhow!("API key {}", R::KEY))?;
        let mut frame = self
            .read_frame()
            .context("reading the response")?
            .context("the broker closed the connection instead of answering")?;
        let header = ResponseHeader::decode(&mut frame, api.response_header_version(version))
            .context("response header")?;
        if header.correlation_id != correlation_id {
            bail!(
                "correlation id {} in the response to {correlation_id}",
                header.correlation_id
            );
        }
        let response = R::Response::decode(&mut frame, version)
            .with_context(|| format!("{api:?} v{version}"))?;
        if frame.has_remaining() {
            bail!(
                "{api:?} v{version} response has {} bytes left over",
                frame.remaining()
            );
        }
        Ok(response)
    }

    /// Sends `request` at `version` without reading the answer; returns its correlation id.
    /// A Fetch request by topic name at a version that names topics by id gets the ids
    /// first (see the module documentation): a Metadata round trip, so such a request must
    /// not follow others whose responses are still unread.
    pub fn send<R: Encodable + 'static>(
        &mut self,
        api: ApiKey,
        version: i16,
        request: &R,
    ) -> anyhow::Result<i32> {
        if let Some(fetch) = (request as &dyn Any).downcast_ref::<FetchRequest>() {
            let unnamed = fetch.topics.iter().any(|topic| topic.topic_id.is_nil());
            if version > FETCH_BY_NAME_VERSION_MAX && unnamed {
                let fetch = self.with_topic_ids(fetch.clone())?;
                return self.send_as_is(api, version, &fetch);
            }
        }
        self.send_as_is(api, version, request)
    }

    fn send_as_is<R: Encodable>(
        &mut self,
        api: ApiKey,
        version: i16,
        request: &R,
    ) -> anyhow::Result<i32> {
        self.correlation_id += 1;
        let frame = request_frame(api, version, self.correlation_id, request)?;
        self.stream.write_all(&frame)?;
        Ok(self.correlation_id)
    }

    /// Writes `bytes` as they are.
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Closes the sending half, so the broker reads end-of-stream.
    pub fn shutdown_write(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }

    /// The next response frame without its size prefix; `None` at end of stream.
    pub fn read_frame(&mut self) -> io::Result<Option<Bytes>> {
        let mut prefix = [0u8; 4];
        if !read_exact_or_eof(&mut self.stream, &mut prefix)? {
            return Ok(None);
        }
        let size = usize::try_from(i32::from_be_bytes(prefix))
            .ok()
            .filter(|&size| size <= RESPONSE_BYTES_MAX)
            .ok_or_else(|| io::Error::other(format!("response frame size {prefix:?}")))?;
        let mut frame = vec![0u8; size];
        self.stream.read_exact(&mut frame)?;
        Ok(Some(Bytes::from(frame)))
    }

    /// Whether the broker closed the connection: end of stream or a reset, with nothing
    /// sent before it. Panics if a response arrives or the read times out.
    pub fn assert_closed_by_broker(&mut self, what: &str) {
        let mut byte = [0u8; 1];
        match self.stream.read(&mut byte) {
            Ok(0) => {}
            Err(error) if error.kind() == io::ErrorKind::ConnectionReset => {}
            Ok(_) => panic!("{what}: the broker answered instead of closing the connection"),
            Err(error) => panic!("{what}: the connection stayed open ({error})"),
        }
    }

    /// Produces `records` as one batch to `topic`/`partition` at Produce's highest version.
    pub fn produce(
        &mut self,
        topic: &str,
        partition: i32,
        records: &[Record],
        acks: i16,
    ) -> PartitionProduceResponse {
        self.produce_raw(topic, partition, encode_batch(records), acks)
    }

    /// Produces `batches` (raw bytes, valid or not) to `topic`/`partition`.
    pub fn produce_raw(
        &mut self,
        topic: &str,
        partition: i32,
        batches: Bytes,
        acks: i16,
    ) -> PartitionProduceResponse {
        let request = produce_request(topic, partition, batches, acks);
        let version = max_version(ApiKey::Produce);
        let response = self.call(&request, version).expect("produce");
        let mut topics = response.responses;
        assert_eq!(topics.len(), 1, "one topic in the produce response");
        let mut partitions = topics.remove(0).partition_responses;
        assert_eq!(partitions.len(), 1, "one partition in the produce response");
        partitions.remove(0)
    }

    /// ListOffsets of one partition at `timestamp` ([`LATEST`], [`EARLIEST`] or a time):
    /// `(error code, offset)`.
    pub fn list_offset(&mut self, topic: &str, partition: i32, timestamp: i64) -> (i16, i64) {
        let request = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(vec![ListOffsetsTopic::default()
                .with_name(topic_name(topic))
                .with_partitions(vec![ListOffsetsPartition::default()
                    .with_partition_index(partition)
                    .with_timestamp(timestamp)])]);
        let response = self
            .call(&request, max_version(ApiKey::ListOffsets))
            .expect("list offsets");
        let answer = &response.topics[0].partitions[0];
        (answer.error_code, answer.offset)
    }

    /// The ids of the topics named `names`, from Metadata (without creating any); the nil
    /// id for a topic Metadata does not know.
    pub fn topic_ids(&mut self, names: &[&str]) -> anyhow::Result<Vec<Uuid>> {
        let topics = names
            .iter()
            .map(|name| MetadataRequestTopic::default().with_name(Some(topic_name(name))))
            .collect();
        let request = MetadataRequest::default()
            .with_topics(Some(topics))
            .with_allow_auto_topic_creation(false);
        let response = self
            .call(&request, max_version(ApiKey::Metadata))
            .context("metadata for topic ids")?;
        Ok(names
            .iter()
            .map(|name| {
                let found = response.topics.iter().find(|topic| {
                    let named = topic.name.as_ref().is_some_and(|n| n.0.as_str() == *name);
                    named && topic.error_code == 0
                });
                found.map_or(Uuid::nil(), |topic| topic.topic_id)
            })
            .collect())
    }

    /// `request` with the id of every topic it names by name only.
    pub fn with_topic_ids(&mut self, mut request: FetchRequest) -> anyhow::Result<FetchRequest> {
        let names: Vec<String> = request
            .topics
            .iter()
            .filter(|topic| topic.topic_id.is_nil() && !topic.topic.0.is_empty())
            .map(|topic| topic.topic.0.as_str().to_owned())
            .collect();
        if names.is_empty() {
            return Ok(request);
        }
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let ids = self.topic_ids(&names)?;
        for topic in &mut request.topics {
            if let Some(index) = names
                .iter()
                .position(|name| *name == topic.topic.0.as_str())
            {
                if topic.topic_id.is_nil() {
                    topic.topic_id = ids[index];
                }
            }
        }
        Ok(request)
    }

    /// One Fetch of one partition from `offset`: `(error code, high watermark, records)`.
    /// Like Kafka's Java client, it fetches by topic id at the highest version when the
    /// topic has an id, and by name at the last version that names topics when not.
    pub fn fetch_once(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
    ) -> (i16, i64, Vec<Record>) {
        let request = fetch_request(topic, partition, offset);
        let request = self.with_topic_ids(request).expect("topic ids");
        let version = if request.topics[0].topic_id.is_nil() {
            max_version(ApiKey::Fetch).min(FETCH_BY_NAME_VERSION_MAX)
        } else {
            max_version(ApiKey::Fetch)
        };
        let response = self.call(&request, version).expect("fetch");
        let answer = &response.responses[0].partitions[0];
        let records = answer
            .records
            .clone()
            .map(|bytes| decode_batches(bytes).expect("fetched batches decode"))
            .unwrap_or_default();
        (answer.error_code, answer.high_watermark, records)
    }

    /// Every record of one partition from `offset` to the high watermark, in order.
    pub fn fetch_all(&mut self, topic: &str, partition: i32, offset: i64) -> Vec<Record> {
        let mut records: Vec<Record> = Vec::new();
        let mut next = offset;
        loop {
            let (error, high_watermark, fetched) = self.fetch_once(topic, partition, next);
            assert_eq!(error, 0, "fetch {topic}-{partition} at {next}");
            // A batch may start before the offset asked for; skip what was already read.
            records.extend(fetched.into_iter().filter(|record| record.offset >= next));
            next = records.last().map_or(next, |record| record.offset + 1);
            if next >= high_watermark {
                return records;
            }
        }
    }

    /// Creates `name` with `partitions` partitions; returns the error code.
    pub fn create_topic(&mut self, name: &str, partitions: i32) -> i16 {
        self.create_topic_with_configs(name, partitions, &[])
    }

    /// Creates `name` with `partitions` partitions and the topic configs `configs` (Kafka
    /// key names, e.g. `("segment.bytes", "1048576")`); returns the error code.
    pub fn create_topic_with_configs(
        &mut self,
        name: &str,
        partitions: i32,
        configs: &[(&str, &str)],
    ) -> i16 {
        let configs = configs
            .iter()
            .map(|(key, value)| {
                CreatableTopicConfig::default()
                    .with_name(StrBytes::from_string((*key).to_owned()))
                    .with_value(Some(StrBytes::from_string((*value).to_owned())))
            })
            .collect();
        let request = CreateTopicsRequest::default()
            .with_timeout_ms(10_000)
            .with_topics(vec![CreatableTopic::default()
                .with_name(topic_name(name))
                .with_num_partitions(partitions)
                .with_replication_factor(1)
                .with_configs(configs)]);
        let response = self
            .call(&request, max_version(ApiKey::CreateTopics))
            .expect("create topics");
        response.topics[0].error_code
    }
}

/// `request` at `version` as a whole frame, size prefix included, with `correlation_id`.
pub fn request_frame<R: Encodable>(
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    request: &R,
) -> anyhow::Result<Vec<u8>> {
    let header = RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str("ringlog-e2e")));
    let mut frame = BytesMut::new();
    frame.put_i32(0);
    header
        .encode(&mut frame, api.request_header_version(version))
        .context("request header")?;
    request
        .encode(&mut frame, version)
        .with_context(|| format!("encoding {api:?} v{version}"))?;
    let size = i32::try_from(frame.len() - 4)?;
    frame[..4].copy_from_slice(&size.to_be_bytes());
    Ok(frame.to_vec())
}

/// Reads exactly `buffer.len()` bytes; `false` if the stream ended before the first one.
fn read_exact_or_eof(stream: &mut TcpStream, buffer: &mut [u8]) -> io::Result<bool> {
    let mut filled = 0;
    while filled < buffer.len() {
        match stream.read(&mut buffer[filled..]) {
            Ok(0) if filled == 0 => return Ok(false),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(read) => filled += read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(true)
}

/// The highest version of `api` ringlog supports.
pub fn max_version(api: ApiKey) -> i16 {
    supported(api)
        .unwrap_or_else(|| panic!("ringlog supports {api:?}"))
        .1
}

pub fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_owned()))
}

/// A Produce request with one partition's `batches`.
pub fn produce_request(topic: &str, partition: i32, batches: Bytes, acks: i16) -> ProduceRequest {
    ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(10_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(topic_name(topic))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(partition)
                .with_records(Some(batches))])])
}

/// A DeleteTopics request for `name` at `version` (which names topics one way before 6 and
/// another from 6 on).
pub fn delete_topics_request(name: &str, version: i16) -> DeleteTopicsRequest {
    let request = DeleteTopicsRequest::default().with_timeout_ms(10_000);
    if version >= 6 {
        request.with_topics(vec![
            DeleteTopicState::default().with_name(Some(topic_name(name)))
        ])
    } else {
        request.with_topic_names(vec![topic_name(name)])
    }
}

/// A Fetch request for one partition from `offset` that does not wait.
pub fn fetch_request(topic: &str, partition: i32, offset: i64) -> FetchRequest {
    FetchRequest::default()
        .with_max_wait_ms(0)
        .with_min_bytes(1)
        .with_max_bytes(8 << 20)
        .with_topics(vec![FetchTopic::default()
            .with_topic(topic_name(topic))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(partition)
                .with_fetch_offset(offset)
                .with_partition_max_bytes(4 << 20)])])
}

/// A record as a producer sends it (offsets are assigned by position in the batch).
pub fn record(
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: &[(&str, Option<&[u8]>)],
    timestamp: i64,
) -> Record {
    let headers: IndexMap<StrBytes, Option<Bytes>> = headers
        .iter()
        .map(|(name, value)| {
            (
                StrBytes::from_string((*name).to_owned()),
                value.map(Bytes::copy_from_slice),
            )
        })
        .collect();
    Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: NO_PARTITION_LEADER_EPOCH,
        producer_id: NO_PRODUCER_ID,
        producer_epoch: NO_PRODUCER_EPOCH,
        timestamp_type: TimestampType::Creation,
        offset: 0,
        sequence: NO_SEQUENCE,
        timestamp,
        key: key.map(Bytes::copy_from_slice),
        value: value.map(Bytes::copy_from_slice),
        headers,
    }
}

/// `records` as one uncompressed RecordBatch v2, offsets renumbered from 0.
pub fn encode_batch(records: &[Record]) -> Bytes {
    let records: Vec<Record> = records
        .iter()
        .enumerate()
        .map(|(index, record)| Record {
            offset: index as i64,
            ..record.clone()
        })
        .collect();
    let mut buffer = BytesMut::new();
    let options = RecordEncodeOptions {
        version: 2,
        compression: Compression::None,
    };
    RecordBatchEncoder::encode(&mut buffer, &records, &options).expect("encode a record batch");
    buffer.freeze()
}

/// One uncompressed batch of an idempotent producer: `values` as records with sequences
/// from `sequence` (the batch header's producer id, epoch and base sequence).
pub fn idempotent_batch(producer_id: i64, epoch: i16, sequence: i32, values: &[&[u8]]) -> Bytes {
    let records: Vec<Record> = values
        .iter()
        .enumerate()
        .map(|(index, value)| Record {
            producer_id,
            producer_epoch: epoch,
            sequence: sequence.wrapping_add(index as i32),
            ..record(None, Some(value), &[], 1_700_000_000_000 + index as i64)
        })
        .collect();
    encode_batch(&records)
}

/// Every record of the batches in `bytes`.
pub fn decode_batches(mut bytes: Bytes) -> anyhow::Result<Vec<Record>> {
    let sets = RecordBatchDecoder::decode_all(&mut bytes)?;
    Ok(sets.into_iter().flat_map(|set| set.records).collect())
}
