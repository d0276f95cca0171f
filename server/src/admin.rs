//! A small blocking Kafka admin client: one connection to one broker, requests encoded
//! and responses decoded with `kafka-protocol`'s client side. `ringlog topic …` uses it;
//! blocking `std::net` is enough for a command that sends a handful of requests.
//!
//! On connect the client asks ApiVersions (version 0, which every broker answers) and
//! afterwards speaks, for each API, the highest version both sides know. Every response is
//! checked to carry its request's correlation id; a response frame larger than
//! `RESPONSE_BYTES_MAX` is refused before it is read. A broker that does not answer within
//! `IO_TIMEOUT` is an I/O error, never a hang.
//!
//! ```no_run
//! use kafka_protocol::messages::DescribeClusterRequest;
//! use ringlog_server::admin::AdminClient;
//!
//! let mut client = AdminClient::connect("127.0.0.1:9092")?;
//! let version = client.version::<DescribeClusterRequest>()?;
//! let cluster = client.call(&DescribeClusterRequest::default(), version)?;
//! println!("{}", cluster.cluster_id.as_str());
//! # Ok::<(), ringlog_server::admin::AdminError>(())
//! ```

pub mod group;
pub mod reassign;
pub mod topic;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, RequestHeader, ResponseHeader,
};
use kafka_protocol::protocol::{Decodable, Encodable, Request, StrBytes};

use crate::errors;

/// Where `ringlog topic` connects unless told otherwise.
pub const BOOTSTRAP_DEFAULT: &str = "127.0.0.1:9092";
/// The client id in every request header.
pub const CLIENT_ID: &str = "ringlog-admin";
/// How long a connect, send or receive may take.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest response frame accepted.
pub const RESPONSE_BYTES_MAX: usize = 100 << 20;

/// Why an admin request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// The bootstrap address does not resolve.
    #[error("cannot resolve broker address {address}")]
    Resolve {
        address: String,
        #[source]
        source: std::io::Error,
    },
    /// No broker accepts connections at the address.
    #[error("cannot connect to the broker at {address}")]
    Connect {
        address: String,
        #[source]
        source: std::io::Error,
    },
    /// The connection failed or timed out mid-request.
    #[error("connection to the broker at {address} failed")]
    Io {
        address: String,
        #[source]
        source: std::io::Error,
    },
    /// The broker's answer is not a valid response to the request.
    #[error("the broker at {address} sent a bad {api:?} v{version} response: {detail}")]
    Protocol {
        address: String,
        api: ApiKey,
        version: i16,
        detail: String,
    },
    /// A request could not be encoded at the negotiated version (a bug in the caller).
    #[error("cannot encode {api:?} v{version}")]
    Encode {
        api: ApiKey,
        version: i16,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The broker and this client share no version of an API.
    #[error(
        "the broker at {address} does not support {api:?} in a version this client speaks \
         ({client_min}..={client_max})"
    )]
    Unsupported {
        address: String,
        api: ApiKey,
        client_min: i16,
        client_max: i16,
    },
    /// The broker answered with a Kafka error code.
    #[error("{context}: {name} ({code}){}", message_suffix(.message.as_deref()))]
    Kafka {
        context: String,
        code: i16,
        name: String,
        message: Option<String>,
    },
}

fn message_suffix(message: Option<&str>) -> String {
    message
        .filter(|message| !message.is_empty())
        .map(|message| format!(": {message}"))
        .unwrap_or_default()
}

impl AdminError {
    /// `Err(Kafka)` for a non-zero error code, with Kafka's name for it.
    pub fn check(context: &str, code: i16, message: Option<&StrBytes>) -> Result<(), AdminError> {
        if code == 0 {
            return Ok(());
        }
        Err(AdminError::Kafka {
            context: context.to_owned(),
            code,
            name: errors::name(code),
            message: message.map(ToString::to_string),
        })
    }
}

/// One connection to a broker, with the API versions it supports.
pub struct AdminClient {
    address: String,
    stream: TcpStream,
    correlation_id: i32,
    /// `(api key, min, max)` as the broker advertised them.
    versions: Vec<(i16, i16, i16)>,
}

impl AdminClient {
    /// Connects to `address` (`HOST:PORT`) and asks which API versions it supports.
    pub fn connect(address: &str) -> Result<AdminClient, AdminError> {
        let candidates: Vec<SocketAddr> = address
            .to_socket_addrs()
            .map_err(|source| AdminError::Resolve {
                address: address.to_owned(),
                source,
            })?
            .collect();
        let mut last_error = std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "the address resolves to nothing",
        );
        for candidate in candidates {
            match TcpStream::connect_timeout(&candidate, IO_TIMEOUT) {
                Ok(stream) => return AdminClient::handshake(address, stream),
                Err(error) => last_error = error,
            }
        }
        Err(AdminError::Connect {
            address: address.to_owned(),
            source: last_error,
        })
    }

    fn handshake(address: &str, stream: TcpStream) -> Result<AdminClient, AdminError> {
        let io = |source| AdminError::Io {
            address: address.to_owned(),
            source,
        };
        stream.set_read_timeout(Some(IO_TIMEOUT)).map_err(io)?;
        stream.set_write_timeout(Some(IO_TIMEOUT)).map_err(io)?;
        stream.set_nodelay(true).map_err(io)?;
        let mut client = AdminClient {
            address: address.to_owned(),
            stream,
            correlation_id: 0,
            versions: Vec::new(),
        };
        let response: ApiVersionsResponse = client.call(&ApiVersionsRequest::default(), 0)?;
        AdminError::check("ApiVersions", response.error_code, None)?;
        client.versions = response
            .api_keys
            .iter()
            .map(|api| (api.api_key, api.min_version, api.max_version))
            .collect();
        Ok(client)
    }

    /// The address this client is connected to, as it was given.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The broker's supported versions of `api`, if it supports it at all.
    pub fn broker_versions(&self, api: ApiKey) -> Option<(i16, i16)> {
        self.versions
            .iter()
            .find(|(key, ..)| *key == api as i16)
            .map(|&(_, min, max)| (min, max))
    }

    /// The highest version of `R` both the broker and this client speak.
    pub fn version<R: Request>(&self) -> Result<i16, AdminError> {
        let api = api_key::<R>();
        let client = R::VERSIONS;
        let unsupported = || AdminError::Unsupported {
            address: self.address.clone(),
            api,
            client_min: client.min,
            client_max: client.max,
        };
        let (min, max) = self.broker_versions(api).ok_or_else(unsupported)?;
        let version = max.min(client.max);
        if version < min.max(client.min) {
            return Err(unsupported());
        }
        Ok(version)
    }

    /// Sends `request` at `version` and waits for its response.
    pub fn call<R: Request>(
        &mut self,
        request: &R,
        version: i16,
    ) -> Result<R::Response, AdminError> {
        let api = api_key::<R>();
        self.correlation_id = self.correlation_id.wrapping_add(1);
        let frame = encode_request(request, api, version, self.correlation_id)?;
        self.stream
            .write_all(&frame)
            .map_err(|source| self.io_error(source))?;
        let mut body = self.read_frame(api, version)?;
        let protocol = |detail: String| AdminError::Protocol {
            address: self.address.clone(),
            api,
            version,
            detail,
        };
        let header = ResponseHeader::decode(&mut body, api.response_header_version(version))
            .map_err(|e| protocol(format!("{e:#}")))?;
        if header.correlation_id != self.correlation_id {
            return Err(protocol(format!(
                "correlation id {} answers request {}",
                header.correlation_id, self.correlation_id
            )));
        }
        R::Response::decode(&mut body, version).map_err(|e| protocol(format!("{e:#}")))
    }

    fn read_frame(&mut self, api: ApiKey, version: i16) -> Result<Bytes, AdminError> {
        let mut size = [0u8; 4];
        self.stream
            .read_exact(&mut size)
            .map_err(|source| self.io_error(source))?;
        let size = i32::from_be_bytes(size);
        let Some(size) = usize::try_from(size)
            .ok()
            .filter(|&size| size <= RESPONSE_BYTES_MAX)
        else {
            return Err(AdminError::Protocol {
                address: self.address.clone(),
                api,
                version,
                detail: format!("frame size {size} is outside 0..={RESPONSE_BYTES_MAX}"),
            });
        };
        let mut body = vec![0u8; size];
        self.stream
            .read_exact(&mut body)
            .map_err(|source| self.io_error(source))?;
        Ok(Bytes::from(body))
    }

    fn io_error(&self, source: std::io::Error) -> AdminError {
        AdminError::Io {
            address: self.address.clone(),
            source,
        }
    }
}

/// `R`'s API key. Every request type the crate defines has one.
fn api_key<R: Request>() -> ApiKey {
    match ApiKey::try_from(R::KEY) {
        Ok(api) => api,
        Err(()) => unreachable!("kafka-protocol request type with unknown key {}", R::KEY),
    }
}

/// One request frame: size prefix, header, body.
fn encode_request<R: Request>(
    request: &R,
    api: ApiKey,
    version: i16,
    correlation_id: i32,
) -> Result<BytesMut, AdminError> {
    let encode_error = |source: anyhow::Error| AdminError::Encode {
        api,
        version,
        source: source.into(),
    };
    let header = RequestHeader::default()
        .with_request_api_key(R::KEY)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str(CLIENT_ID)));
    let mut frame = BytesMut::new();
    frame.put_i32(0);
    header
        .encode(&mut frame, api.request_header_version(version))
        .map_err(encode_error)?;
    request.encode(&mut frame, version).map_err(encode_error)?;
    let size = i32::try_from(frame.len() - 4).map_err(|e| encode_error(e.into()))?;
    frame[..4].copy_from_slice(&size.to_be_bytes());
    Ok(frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kafka_errors_read_with_context_name_code_and_message() {
        let message = StrBytes::from_static_str("topic t does not exist");
        let error = AdminError::check("describe topic t", 3, Some(&message)).unwrap_err();
        assert_eq!(
            error.to_string(),
            "describe topic t: UNKNOWN_TOPIC_OR_PARTITION (3): topic t does not exist"
        );
        let bare = AdminError::check("delete topic t", 41, None).unwrap_err();
        assert_eq!(bare.to_string(), "delete topic t: NOT_CONTROLLER (41)");
        assert!(AdminError::check("ok", 0, Some(&message)).is_ok());
    }

    #[test]
    fn request_frames_carry_their_size_and_header() {
        let frame =
            encode_request(&ApiVersionsRequest::default(), ApiKey::ApiVersions, 0, 7).unwrap();
        let size = i32::from_be_bytes(frame[..4].try_into().unwrap());
        assert_eq!(size as usize, frame.len() - 4);
        assert_eq!(&frame[4..6], &18i16.to_be_bytes(), "ApiVersions' key");
        assert_eq!(&frame[6..8], &0i16.to_be_bytes());
        assert_eq!(&frame[8..12], &7i32.to_be_bytes());
    }

    #[test]
    fn connection_refused_names_the_address() {
        // Bind then drop a listener: its port is then (almost surely) closed.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let address = format!("127.0.0.1:{port}");
        let Err(error) = AdminClient::connect(&address) else {
            panic!("connected to a closed port");
        };
        assert!(matches!(error, AdminError::Connect { .. }), "{error:?}");
        assert!(error.to_string().contains(&address), "{error}");
    }
}
