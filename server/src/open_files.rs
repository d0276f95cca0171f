//! The process's open-file limit (`RLIMIT_NOFILE`). Every connection holds a socket, so
//! the limit bounds connections as surely as `max_connections` does, and a descriptor
//! refused to a segment file at a roll would poison its partition. `ringlog serve` raises
//! its soft limit to the hard one at start (which any process may do), and the default
//! `max_connections` leaves a quarter of the limit to files, pipes and fetches
//! (`ServerConfig::max_connections_or_default`).

use std::io;

/// Raises the soft open-file limit to the hard limit; returns the soft limit now in force
/// (the old one if raising failed, after a warning).
pub fn raise_to_hard_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit for the call to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: `raised` is a valid rlimit that the call only reads.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const raised) } == 0 {
            limit = raised;
        } else {
            let error = io::Error::last_os_error();
            tracing::warn!(%error, soft = limit.rlim_cur, hard = limit.rlim_max,
                "could not raise the open-file limit to its hard limit");
        }
    }
    Ok(limit.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_ends_at_the_hard_limit() {
        let soft = raise_to_hard_limit().unwrap();
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `limit` is a valid, writable rlimit for the call to fill.
        let read = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) };
        assert_eq!(read, 0);
        assert_eq!((soft, limit.rlim_cur), (limit.rlim_max, limit.rlim_max));
    }
}
