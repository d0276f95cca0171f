//! Refusing a listen address another process already serves.
//!
//! Every shard listens on the Kafka address with SO_REUSEPORT so the kernel spreads
//! connections among them. SO_REUSEPORT does not know which process a socket belongs to:
//! a second ringlog (same user) binding the same address joins the group, the kernel
//! splits clients between the two processes, and neither notices. So once every shard
//! listens, and before any of them accepts, the listening sockets on the address are
//! listed (`/proc/net/tcp`, `/proc/net/tcp6`, in this network namespace) and compared with
//! ours by inode: any other one means another process serves the address, and the start
//! is refused. Whichever of two racing processes checks second sees the other's sockets,
//! so at most one of them goes on. Connections the kernel queued on our sockets meanwhile
//! are reset when they close; none of them was read.
//!
//! The holder's PID is looked up (by the inode, in `/proc/<pid>/fd`) to name it in the
//! error, and for one more reason: a listening socket no process holds belongs to a process
//! that has just exited. A ringlog killed with SIGKILL keeps its listeners a little while
//! after it is gone, because the kernel releases an io_uring's files (and the multishot
//! accept's socket) in a worker after the exit. Such an orphan is waited for (up to
//! [`ORPHAN_WAIT`]) rather than taken for a live server, so a restart right after a kill
//! goes on; a socket still orphaned after that is refused like any other.
//!
//! `/proc/net/tcp` lines, after a header line, are whitespace-separated fields:
//!
//! | field | content |
//! | --- | --- |
//! | 0 | slot number and `:` |
//! | 1 | local address `ADDR:PORT`: ADDR is 8 (IPv4) or 32 (IPv6) hex digits, each 32-bit word printed as the host reads it; PORT is 4 hex digits |
//! | 2 | remote address, same form |
//! | 3 | state, `0A` for LISTEN |
//! | 4–8 | queues, timers, retransmits, uid, timeout |
//! | 9 | the socket's inode number |

use std::fs;
use std::io::{self, BufRead, BufReader, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

/// How long a listening socket no process holds (its process just exited) may take to go.
pub const ORPHAN_WAIT: Duration = Duration::from_secs(5);
/// How often an orphaned listener is looked for again.
const ORPHAN_RECHECK: Duration = Duration::from_millis(50);

/// The TCP state number of a listening socket in `/proc/net/tcp`.
const STATE_LISTEN: &str = "0A";
/// Field positions in a `/proc/net/tcp` line (see the module's table).
const FIELD_LOCAL_ADDRESS: usize = 1;
const FIELD_STATE: usize = 3;
const FIELD_INODE: usize = 9;
/// Lines read from one `/proc/net/tcp*` file; a host with more sockets than this is not
/// one ringlog is checked on, and the check then says what it could not read.
const PROC_NET_LINES_MAX: usize = 4_000_000;
/// Descriptors looked at while looking for a holder's PID.
const PROC_FDS_MAX: usize = 1_000_000;

/// Another process's socket listening on an address that overlaps ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignListener {
    pub address: SocketAddr,
    pub inode: u64,
    /// The process holding it, with its command name, if it could be found.
    pub holder: Option<(u32, String)>,
}

impl std::fmt::Display for ForeignListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.holder {
            Some((pid, command)) => write!(f, "PID {pid} ({command}) on {}", self.address),
            None => write!(f, "another process (PID unknown) on {}", self.address),
        }
    }
}

/// [`foreign_listener`], waiting up to [`ORPHAN_WAIT`] while the one found is held by no
/// process (see the module doc).
pub fn foreign_listener_settled(
    address: SocketAddr,
    own_inodes: &[u64],
) -> io::Result<Option<ForeignListener>> {
    let deadline = Instant::now() + ORPHAN_WAIT;
    loop {
        let found = foreign_listener(address, own_inodes)?;
        match &found {
            Some(listener) if listener.holder.is_none() && Instant::now() < deadline => {
                std::thread::sleep(ORPHAN_RECHECK);
            }
            _ => return Ok(found),
        }
    }
}

/// The first socket other than `own_inodes` that listens on an address overlapping
/// `address`, if any.
pub fn foreign_listener(
    address: SocketAddr,
    own_inodes: &[u64],
) -> io::Result<Option<ForeignListener>> {
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let file = match fs::File::open(table) {
            Ok(file) => file,
            // A kernel without IPv6 has no tcp6 table.
            Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
            Err(error) => return Err(error),
        };
        let listeners = listeners_in(BufReader::new(file))?;
        let found = listeners.into_iter().find(|&(bound, inode)| {
            inode != 0 && !own_inodes.contains(&inode) && overlaps(bound, address)
        });
        if let Some((bound, inode)) = found {
            return Ok(Some(ForeignListener {
                address: bound,
                inode,
                holder: holder_of(inode),
            }));
        }
    }
    Ok(None)
}

/// Every listening socket of one `/proc/net/tcp*` table: its address and inode. Lines that
/// do not parse are skipped (the format is the kernel's; a field it adds at the end
/// changes nothing here).
fn listeners_in(table: impl BufRead) -> io::Result<Vec<(SocketAddr, u64)>> {
    let mut listeners = Vec::new();
    for (index, line) in table.lines().enumerate() {
        if index > PROC_NET_LINES_MAX {
            return Err(io::Error::other(format!(
                "more than {PROC_NET_LINES_MAX} sockets listed; cannot check the address"
            )));
        }
        let line = line?;
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.get(FIELD_STATE) != Some(&STATE_LISTEN) {
            continue;
        }
        let address = fields
            .get(FIELD_LOCAL_ADDRESS)
            .and_then(|f| parse_address(f));
        let inode = fields.get(FIELD_INODE).and_then(|f| f.parse::<u64>().ok());
        if let (Some(address), Some(inode)) = (address, inode) {
            listeners.push((address, inode));
        }
    }
    Ok(listeners)
}

/// `ADDR:PORT` as `/proc/net/tcp*` prints it.
fn parse_address(field: &str) -> Option<SocketAddr> {
    let (address, port) = field.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |index: usize| -> Option<[u8; 4]> {
        let hex = address.get(index * 8..index * 8 + 8)?;
        // The kernel prints each 32-bit word of the network-order address as the host
        // reads it, so the host's byte order gives the network bytes back.
        Some(u32::from_str_radix(hex, 16).ok()?.to_ne_bytes())
    };
    let ip = match address.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut octets = [0_u8; 16];
            for (index, chunk) in octets.chunks_exact_mut(4).enumerate() {
                chunk.copy_from_slice(&word(index)?);
            }
            IpAddr::V6(Ipv6Addr::from(octets))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Whether a socket bound to `a` receives connections meant for `b` or the other way
/// round: same port, and the same address or a wildcard covering the other. An IPv6
/// wildcard covers IPv4 too (dual-stack sockets are the default).
fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    if a.port() != b.port() {
        return false;
    }
    match (a.ip(), b.ip()) {
        (IpAddr::V4(x), IpAddr::V4(y)) => x == y || x.is_unspecified() || y.is_unspecified(),
        (IpAddr::V6(x), IpAddr::V6(y)) => x == y || x.is_unspecified() || y.is_unspecified(),
        (IpAddr::V4(v4), IpAddr::V6(v6)) | (IpAddr::V6(v6), IpAddr::V4(v4)) => {
            v6.is_unspecified() || v6.to_ipv4_mapped() == Some(v4)
        }
    }
}

/// The process with a descriptor of socket `inode`, and its command name.
fn holder_of(inode: u64) -> Option<(u32, String)> {
    let target = format!("socket:[{inode}]");
    let mut looked_at = 0_usize;
    for process in fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = process
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = fs::read_dir(process.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            looked_at += 1;
            if looked_at > PROC_FDS_MAX {
                return None;
            }
            if fs::read_link(fd.path()).is_ok_and(|link| link.as_os_str() == target.as_str()) {
                return Some((pid, command_of(pid)));
            }
        }
    }
    None
}

/// `/proc/<pid>/comm` without its newline, or `?`.
fn command_of(pid: u32) -> String {
    let mut command = String::new();
    let read = fs::File::open(format!("/proc/{pid}/comm"))
        .and_then(|file| file.take(64).read_to_string(&mut command));
    match read {
        Ok(_) => command.trim_end().to_owned(),
        Err(_) => "?".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_sockets_are_read_from_both_table_forms() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when \
                     retrnsmt   uid  timeout inode\n   \
                     0: 0100007F:2384 00000000:0000 0A 00000000:00000000 00:00000000 \
                     00000000     0        0 4242 1 0000000000000000 100 0 0 10 0\n   \
                     1: 0100007F:2384 0100007F:C350 01 00000000:00000000 00:00000000 \
                     00000000     0        0 4343 1 0000000000000000 20 4 30 10 -1\n";
        let listeners = listeners_in(table.as_bytes()).unwrap();
        assert_eq!(
            listeners,
            [(SocketAddr::from(([127, 0, 0, 1], 9092)), 4242)],
            "only the LISTEN line"
        );
        let loopback6 = format!(
            "{}:{:04X}",
            "00000000".repeat(3) + &word_hex([0, 0, 0, 1]),
            80
        );
        assert_eq!(
            parse_address(&loopback6),
            Some(SocketAddr::from((Ipv6Addr::LOCALHOST, 80)))
        );
        assert_eq!(parse_address("0100007F"), None);
        assert_eq!(parse_address("01007F:2384"), None);
    }

    /// How the kernel prints one word of an address: the network bytes read as a host u32.
    fn word_hex(bytes: [u8; 4]) -> String {
        format!("{:08X}", u32::from_ne_bytes(bytes))
    }

    #[test]
    fn wildcards_overlap_specific_addresses_on_the_same_port_only() {
        let v4 = |a: [u8; 4], port| SocketAddr::from((a, port));
        let v6 = |a: Ipv6Addr, port| SocketAddr::from((a, port));
        assert!(overlaps(v4([127, 0, 0, 1], 9092), v4([127, 0, 0, 1], 9092)));
        assert!(overlaps(v4([0, 0, 0, 0], 9092), v4([127, 0, 0, 1], 9092)));
        assert!(overlaps(v4([127, 0, 0, 1], 9092), v4([0, 0, 0, 0], 9092)));
        assert!(!overlaps(
            v4([127, 0, 0, 1], 9092),
            v4([127, 0, 0, 2], 9092)
        ));
        assert!(!overlaps(
            v4([127, 0, 0, 1], 9092),
            v4([127, 0, 0, 1], 9093)
        ));
        assert!(overlaps(
            v6(Ipv6Addr::UNSPECIFIED, 9092),
            v4([127, 0, 0, 1], 9092)
        ));
        let mapped = Ipv4Addr::LOCALHOST.to_ipv6_mapped();
        assert!(overlaps(v6(mapped, 9092), v4([127, 0, 0, 1], 9092)));
        assert!(!overlaps(
            v6(Ipv6Addr::LOCALHOST, 9092),
            v4([127, 0, 0, 1], 9092)
        ));
    }

    #[test]
    fn a_listener_of_this_process_is_found_unless_it_is_declared_own() {
        use std::os::unix::fs::MetadataExt;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let inode = fs::metadata(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&listener)
        ))
        .unwrap()
        .ino();
        let found = foreign_listener(address, &[]).unwrap().unwrap();
        assert_eq!(found.inode, inode);
        assert_eq!(found.holder.as_ref().map(|h| h.0), Some(std::process::id()));
        let wildcard = SocketAddr::from(([0, 0, 0, 0], address.port()));
        assert!(foreign_listener(wildcard, &[]).unwrap().is_some());
        assert_eq!(foreign_listener(address, &[inode]).unwrap(), None);
    }
}
