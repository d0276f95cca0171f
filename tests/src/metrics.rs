//! A running server's metrics (`GET /metrics` on `--metrics-listen`), read as one map.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Every sample of one scrape, by its name and labels as written
/// (`ringlog_connections_refused_total{reason="max_connections"}`).
#[derive(Debug, Clone)]
pub struct Samples(pub HashMap<String, f64>);

impl Samples {
    /// A counter or gauge as a whole number (0 if absent).
    pub fn value(&self, name: &str) -> u64 {
        self.0.get(name).map_or(0, |value| value.round() as u64)
    }
}

/// Every sample of one scrape.
pub fn scrape(address: SocketAddr) -> Samples {
    let samples = exposition(address)
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| {
            let (sample, value) = line.rsplit_once(' ')?;
            Some((sample.to_owned(), value.parse().ok()?))
        })
        .collect();
    Samples(samples)
}

/// One scrape's body as the broker wrote it: `# HELP` and `# TYPE` lines, then samples.
pub fn exposition(address: SocketAddr) -> String {
    let mut stream = TcpStream::connect(address).expect("connect to the metrics endpoint");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("send the scrape");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("read the scrape");
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    body.to_owned()
}

/// One counter or gauge, scraped now (0 if absent).
pub fn sample(address: SocketAddr, name: &str) -> u64 {
    scrape(address).value(name)
}

/// Scrapes until counter or gauge `name` reaches `want` or `timeout` passes; the last value
/// seen.
pub fn wait_for(address: SocketAddr, name: &str, want: u64, timeout: Duration) -> u64 {
    let deadline = Instant::now() + timeout;
    loop {
        let value = sample(address, name);
        if value >= want || Instant::now() > deadline {
            return value;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
