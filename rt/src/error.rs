//! Errors of the runtime: the one errno mapping, and the typed error for an io_uring that
//! cannot be set up.
//!
//! Every completion's `res` goes through [`cqe_result`]: a negative value is `-errno` and
//! becomes an [`io::Error`] carrying that errno (so `kind()` and `raw_os_error()` work as
//! callers expect); anything else is the operation's non-negative result.
//!
//! [`RingSetupError`] is an environmental stop, not an operating error: the message names
//! the cause (kernel too old, disabled by sysctl, blocked by seccomp, memlock limit, …)
//! and how to fix it, and binaries exit with [`EXIT_CODE_IO_URING_UNAVAILABLE`].

use std::fmt;
use std::io;

/// The exit status of a binary that stops because io_uring is unavailable (`EX_UNAVAILABLE`
/// from `sysexits.h`).
pub const EXIT_CODE_IO_URING_UNAVAILABLE: i32 = 69;

/// Maps a completion's `res` field to a result: `-errno` to the error, anything else to the
/// operation's count or descriptor.
pub fn cqe_result(res: i32) -> io::Result<u32> {
    if res < 0 {
        Err(io::Error::from_raw_os_error(-res))
    } else {
        Ok(res.unsigned_abs())
    }
}

/// Why io_uring could not be used on this machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum UnavailableCause {
    /// `io_uring_setup` does not exist (ENOSYS): the kernel is older than 5.1 or built
    /// without `CONFIG_IO_URING`.
    KernelTooOld,
    /// The kernel has io_uring but lacks a feature or operation ringlog needs.
    KernelMissingFeature(&'static str),
    /// `kernel.io_uring_disabled` is set to the given value (1 or 2).
    DisabledBySysctl(u8),
    /// EPERM with the sysctl clear: a seccomp profile (Docker's default, for one) or an
    /// LSM policy denies the system call.
    DeniedByPolicy,
    /// ENOMEM: the ring's memory could not be locked under `RLIMIT_MEMLOCK` (kernels before
    /// 5.12 account ring memory against it) or the machine is out of memory.
    MemlockLimit,
    /// EMFILE or ENFILE: no file descriptor left for the ring.
    FileDescriptorLimit,
    /// Any other failure of `io_uring_setup`.
    Other,
}

impl UnavailableCause {
    /// Classifies the errno of a failed `io_uring_setup`, given the value of
    /// `/proc/sys/kernel/io_uring_disabled` if it could be read.
    pub fn classify(errno: Option<i32>, sysctl_disabled: Option<u8>) -> UnavailableCause {
        match errno {
            Some(libc::ENOSYS) => UnavailableCause::KernelTooOld,
            Some(libc::EPERM | libc::EACCES) => match sysctl_disabled {
                Some(value @ 1..) => UnavailableCause::DisabledBySysctl(value),
                _ => UnavailableCause::DeniedByPolicy,
            },
            Some(libc::ENOMEM) => UnavailableCause::MemlockLimit,
            Some(libc::EMFILE | libc::ENFILE) => UnavailableCause::FileDescriptorLimit,
            _ => UnavailableCause::Other,
        }
    }

    /// What to do about it, as a sentence an operator can follow.
    pub fn remedy(self) -> &'static str {
        match self {
            // The release is KERNEL_VERSION_MIN; a test in kernel.rs keeps the two equal.
            UnavailableCause::KernelTooOld | UnavailableCause::KernelMissingFeature(_) => {
                "run ringlog on Linux 5.19 or newer with CONFIG_IO_URING enabled"
            }
            UnavailableCause::DisabledBySysctl(_) => {
                "allow it with `sysctl -w kernel.io_uring_disabled=0` (as root)"
            }
            UnavailableCause::DeniedByPolicy => {
                "allow the io_uring_setup, io_uring_enter and io_uring_register system calls \
                 in the container's seccomp profile (for Docker: \
                 --security-opt seccomp=unconfined or a profile that permits them)"
            }
            UnavailableCause::MemlockLimit => {
                "raise the locked-memory limit (`ulimit -l unlimited`, or LimitMEMLOCK= in the \
                 systemd unit) or free memory"
            }
            UnavailableCause::FileDescriptorLimit => {
                "raise the open-file limit (`ulimit -n`, or LimitNOFILE= in the systemd unit)"
            }
            UnavailableCause::Other => "check the kernel log (dmesg) for io_uring messages",
        }
    }
}

impl fmt::Display for UnavailableCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnavailableCause::KernelTooOld => f.write_str("the kernel does not provide io_uring"),
            UnavailableCause::KernelMissingFeature(what) => {
                write!(f, "the kernel's io_uring lacks {what}")
            }
            UnavailableCause::DisabledBySysctl(value) => {
                write!(
                    f,
                    "io_uring is disabled by sysctl kernel.io_uring_disabled={value}"
                )
            }
            UnavailableCause::DeniedByPolicy => {
                f.write_str("io_uring_setup is denied by a seccomp or security policy")
            }
            UnavailableCause::MemlockLimit => {
                f.write_str("the ring's memory could not be allocated under RLIMIT_MEMLOCK")
            }
            UnavailableCause::FileDescriptorLimit => {
                f.write_str("no file descriptor is left for the ring")
            }
            UnavailableCause::Other => f.write_str("io_uring_setup failed"),
        }
    }
}

/// io_uring could not be set up; see [`UnavailableCause`] for the causes and remedies.
#[derive(Debug)]
pub struct RingSetupError {
    cause: UnavailableCause,
    source: io::Error,
}

impl RingSetupError {
    /// Builds the error for a failed `io_uring_setup`, reading the sysctl to tell a policy
    /// denial from a disabled io_uring.
    pub(crate) fn from_setup(source: io::Error) -> RingSetupError {
        let sysctl = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
            .ok()
            .and_then(|text| text.trim().parse::<u8>().ok());
        let cause = UnavailableCause::classify(source.raw_os_error(), sysctl);
        RingSetupError { cause, source }
    }

    pub(crate) fn missing(feature: &'static str) -> RingSetupError {
        Self::missing_with(feature, io::Error::from_raw_os_error(libc::EOPNOTSUPP))
    }

    /// A missing feature, with `source` saying how it was found missing.
    pub(crate) fn missing_with(feature: &'static str, source: io::Error) -> RingSetupError {
        RingSetupError {
            cause: UnavailableCause::KernelMissingFeature(feature),
            source,
        }
    }

    /// What made io_uring unavailable.
    pub fn cause(&self) -> UnavailableCause {
        self.cause
    }
}

impl fmt::Display for RingSetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "io_uring is unavailable: {} ({}); to fix: {}",
            self.cause,
            self.source,
            self.cause.remedy()
        )
    }
}

impl std::error::Error for RingSetupError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// A ring that failed, or stayed busy past its bound, while the runtime ran.
///
/// [`DriverError::CompletionsLost`] and [`DriverError::Enter`] are fatal
/// ([`DriverError::is_fatal`]): the runtime stops, and since the kernel may still use the
/// memory of operations in flight and will never report them done, it leaks the ring and
/// that memory rather than free it. A shard reports it as [`Error::ShardFailed`];
/// [`block_on`](crate::block_on) panics with it.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum DriverError {
    /// The kernel dropped completions: its completion queue was full and it had no memory
    /// to keep the overflow. The operations they belonged to can never complete.
    #[error(
        "the kernel dropped {count} io_uring completion(s): the completion queue overflowed \
         and there was no memory to keep them"
    )]
    CompletionsLost { count: u32 },
    /// `io_uring_enter` answered EAGAIN or EBUSY through
    /// [`RING_ENTER_BUSY_RETRIES_MAX`](crate::limits::RING_ENTER_BUSY_RETRIES_MAX) waits.
    /// Not fatal: the operation being pushed fails with EAGAIN, the executor retries later.
    #[error("io_uring_enter stayed busy (EAGAIN or EBUSY) through {retries} retries")]
    Busy { retries: u32 },
    /// `io_uring_enter` failed with an error the driver has no answer for.
    #[error("io_uring_enter failed")]
    Enter {
        #[source]
        source: std::sync::Arc<io::Error>,
    },
}

impl DriverError {
    /// Whether the runtime must stop (and leak its in-flight memory).
    pub fn is_fatal(&self) -> bool {
        !matches!(self, DriverError::Busy { .. })
    }

    /// The error an operation sees when it cannot be pushed because of this: EAGAIN for a
    /// busy ring, EIO for a failed one.
    pub(crate) fn errno(&self) -> i32 {
        match self {
            DriverError::Busy { .. } => libc::EAGAIN,
            DriverError::CompletionsLost { .. } | DriverError::Enter { .. } => libc::EIO,
        }
    }
}

/// Errors of starting or running shards.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A shard could not set up its ring.
    #[error("shard {shard}: {source}")]
    RingUnavailable {
        shard: usize,
        #[source]
        source: RingSetupError,
    },
    /// The OS refused to start a shard thread.
    #[error("could not start shard thread {shard}")]
    ThreadSpawn {
        shard: usize,
        #[source]
        source: io::Error,
    },
    /// A shard thread panicked; the panic message went to stderr.
    #[error("shard {shard} panicked")]
    ShardPanicked { shard: usize },
    /// A shard's ring failed; the shard stopped and leaked its in-flight memory.
    #[error("shard {shard} stopped: {source}")]
    ShardFailed {
        shard: usize,
        #[source]
        source: DriverError,
    },
}

impl Error {
    /// The ring setup error, if that is what stopped a shard.
    pub fn ring_setup(&self) -> Option<&RingSetupError> {
        match self {
            Error::RingUnavailable { source, .. } => Some(source),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negative_results_become_errno_errors() {
        let error = cqe_result(-libc::ENOSPC).unwrap_err();
        assert_eq!(error.raw_os_error(), Some(libc::ENOSPC));
        assert_eq!(error.kind(), io::ErrorKind::StorageFull);
        assert_eq!(
            cqe_result(-libc::ECANCELED).unwrap_err().raw_os_error(),
            Some(125)
        );
        assert_eq!(cqe_result(4096).unwrap(), 4096);
        assert_eq!(cqe_result(0).unwrap(), 0);
    }

    #[test]
    fn setup_failures_are_classified_with_a_remedy() {
        use UnavailableCause as C;
        assert_eq!(C::classify(Some(libc::ENOSYS), None), C::KernelTooOld);
        assert_eq!(
            C::classify(Some(libc::EPERM), Some(2)),
            C::DisabledBySysctl(2)
        );
        assert_eq!(C::classify(Some(libc::EPERM), Some(0)), C::DeniedByPolicy);
        assert_eq!(C::classify(Some(libc::EPERM), None), C::DeniedByPolicy);
        assert_eq!(C::classify(Some(libc::ENOMEM), Some(0)), C::MemlockLimit);
        assert_eq!(
            C::classify(Some(libc::EMFILE), None),
            C::FileDescriptorLimit
        );
        assert_eq!(C::classify(Some(libc::EINVAL), None), C::Other);

        let error = RingSetupError {
            cause: C::DisabledBySysctl(2),
            source: io::Error::from_raw_os_error(libc::EPERM),
        };
        let message = error.to_string();
        assert!(message.contains("kernel.io_uring_disabled=2"), "{message}");
        assert!(
            message.contains("sysctl -w kernel.io_uring_disabled=0"),
            "{message}"
        );
    }
}
