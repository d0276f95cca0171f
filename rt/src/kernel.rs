//! What the runtime needs of the kernel, and the checks that refuse a kernel without it
//! before any work starts.
//!
//! The floor is Linux 5.19 ([`KERNEL_VERSION_MIN`]). Two things the runtime depends on came
//! in that release: multishot accept (`IORING_ACCEPT_MULTISHOT`, how every shard accepts
//! connections) and cancelling every operation of a ring at once
//! (`IORING_ASYNC_CANCEL_ANY` with `IORING_ASYNC_CANCEL_ALL`, how a shard stops). Neither
//! can be probed: an older kernel has the accept and cancel opcodes and rejects the flags
//! only when an entry carries them, so without this check a server on such a kernel never
//! accepts and its shutdown waits forever. The release `uname` reports is therefore
//! checked first ([`check_release`]); then the ring's features and every opcode the
//! runtime submits, through `IORING_REGISTER_PROBE` ([`check_ring`]).
//!
//! A distribution kernel that backported 5.19's io_uring under an older release number is
//! refused too: the release number is what can be checked. A release that cannot be read
//! or parsed passes the first check; the probe still catches a kernel whose io_uring lacks
//! an opcode.
//!
//! Both checks are pure functions of what they are given, so a test can hand them an older
//! kernel's release or probe and see what is refused and how it is named.

use std::fmt;
use std::io;

use io_uring::opcode;

use super::error::RingSetupError;

/// A kernel release, as the `major.minor` that `uname -r` starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct KernelVersion {
    pub(crate) major: u32,
    pub(crate) minor: u32,
}

/// The oldest kernel the runtime runs on; see the module documentation for why.
pub(crate) const KERNEL_VERSION_MIN: KernelVersion = KernelVersion {
    major: 5,
    minor: 19,
};

/// What a kernel below [`KERNEL_VERSION_MIN`] lacks, as the refusal names it.
const FLOOR_FEATURES: &str =
    "multishot accept and cancel-all (IORING_ACCEPT_MULTISHOT, IORING_ASYNC_CANCEL_ALL; Linux 5.19)";

impl KernelVersion {
    /// The leading `major.minor` of a release string ("6.8.0-45-generic" is 6.8).
    pub(crate) fn parse(release: &str) -> Option<KernelVersion> {
        let mut numbers = release.split(|c: char| !c.is_ascii_digit());
        let major = numbers.next()?.parse().ok()?;
        let minor = numbers.next()?.parse().ok()?;
        Some(KernelVersion { major, minor })
    }
}

impl fmt::Display for KernelVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// The running kernel's release (`uname -r`), or `None` if uname fails.
pub(crate) fn kernel_release() -> Option<String> {
    // SAFETY: utsname is plain data (arrays of c_char); all-zero is a valid value.
    let mut name: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: uname writes into the struct we pass, which lives across the call.
    if unsafe { libc::uname(&raw mut name) } != 0 {
        return None;
    }
    let release: Vec<u8> = name
        .release
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    Some(String::from_utf8_lossy(&release).into_owned())
}

/// Refuses a kernel whose release is below [`KERNEL_VERSION_MIN`], naming what it lacks.
pub(crate) fn check_release(release: Option<&str>) -> Result<(), RingSetupError> {
    let Some(release) = release else {
        return Ok(());
    };
    match KernelVersion::parse(release) {
        Some(version) if version < KERNEL_VERSION_MIN => {
            let source = io::Error::new(
                io::ErrorKind::Unsupported,
                format!("this kernel is Linux {release}"),
            );
            Err(RingSetupError::missing_with(FLOOR_FEATURES, source))
        }
        _ => Ok(()),
    }
}

/// Which operations the kernel supports beyond the ones ringlog requires.
#[derive(Debug, Clone, Copy)]
pub struct Features {
    /// `IORING_OP_SEND_ZC` (Linux 6.0).
    pub send_zc: bool,
}

/// Every opcode the runtime submits; a kernel without one of them cannot run ringlog.
const OPCODES_REQUIRED: [(u8, &str); 21] = [
    (opcode::Nop::CODE, "IORING_OP_NOP"),
    (opcode::Read::CODE, "IORING_OP_READ"),
    (opcode::Write::CODE, "IORING_OP_WRITE"),
    (opcode::Readv::CODE, "IORING_OP_READV"),
    (opcode::Writev::CODE, "IORING_OP_WRITEV"),
    (opcode::Fsync::CODE, "IORING_OP_FSYNC"),
    (opcode::Fallocate::CODE, "IORING_OP_FALLOCATE"),
    (opcode::OpenAt::CODE, "IORING_OP_OPENAT"),
    (opcode::Close::CODE, "IORING_OP_CLOSE"),
    (opcode::Statx::CODE, "IORING_OP_STATX"),
    (opcode::RenameAt::CODE, "IORING_OP_RENAMEAT"),
    (opcode::UnlinkAt::CODE, "IORING_OP_UNLINKAT"),
    (opcode::MkDirAt::CODE, "IORING_OP_MKDIRAT"),
    (opcode::Accept::CODE, "IORING_OP_ACCEPT"),
    (opcode::Connect::CODE, "IORING_OP_CONNECT"),
    (opcode::Recv::CODE, "IORING_OP_RECV"),
    (opcode::Send::CODE, "IORING_OP_SEND"),
    (opcode::Splice::CODE, "IORING_OP_SPLICE"),
    (opcode::Timeout::CODE, "IORING_OP_TIMEOUT"),
    (opcode::LinkTimeout::CODE, "IORING_OP_LINK_TIMEOUT"),
    (opcode::AsyncCancel::CODE, "IORING_OP_ASYNC_CANCEL"),
];

/// Refuses a ring without a feature or opcode the runtime needs, naming the first missing;
/// otherwise reports the optional ones. `ext_arg` and `nodrop` are the ring's
/// `IORING_FEAT_EXT_ARG` and `IORING_FEAT_NODROP`; `supported` answers the probe.
pub(crate) fn check_ring(
    ext_arg: bool,
    nodrop: bool,
    supported: impl Fn(u8) -> bool,
) -> Result<Features, RingSetupError> {
    if !ext_arg {
        return Err(RingSetupError::missing("IORING_FEAT_EXT_ARG (Linux 5.11)"));
    }
    if !nodrop {
        return Err(RingSetupError::missing("IORING_FEAT_NODROP (Linux 5.5)"));
    }
    for (code, name) in OPCODES_REQUIRED {
        if !supported(code) {
            return Err(RingSetupError::missing(name));
        }
    }
    Ok(Features {
        send_zc: supported(opcode::SendZc::CODE),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::UnavailableCause;

    #[test]
    fn releases_parse_to_major_and_minor() {
        let parse = |release| KernelVersion::parse(release).map(|v| (v.major, v.minor));
        assert_eq!(parse("6.18.44-fc-v657"), Some((6, 18)));
        assert_eq!(parse("5.15.0-91-generic"), Some((5, 15)));
        assert_eq!(parse("5.19"), Some((5, 19)));
        assert_eq!(parse("6.1.0-rc1+"), Some((6, 1)));
        assert_eq!(parse("linux"), None);
        assert_eq!(parse("6"), None);
        assert!(KernelVersion::parse("5.9").unwrap() < KERNEL_VERSION_MIN);
        assert!(KernelVersion::parse("10.0").unwrap() > KERNEL_VERSION_MIN);
        assert!(
            kernel_release().is_some(),
            "uname answers on the test machine"
        );
    }

    #[test]
    fn a_kernel_older_than_the_floor_is_refused_naming_what_it_lacks() {
        let error = check_release(Some("5.15.0-91-generic")).unwrap_err();
        assert_eq!(
            error.cause(),
            UnavailableCause::KernelMissingFeature(FLOOR_FEATURES)
        );
        let message = error.to_string();
        for expected in [
            "IORING_ACCEPT_MULTISHOT",
            "IORING_ASYNC_CANCEL_ALL",
            "this kernel is Linux 5.15.0-91-generic",
            &format!("run ringlog on Linux {KERNEL_VERSION_MIN} or newer"),
        ] {
            assert!(message.contains(expected), "{expected:?} not in {message}");
        }
        let error = check_release(Some("5.18.19")).unwrap_err();
        assert!(matches!(
            error.cause(),
            UnavailableCause::KernelMissingFeature(_)
        ));

        for accepted in ["5.19.0", "6.1.55", "6.18.44-fc-v657", "7.0"] {
            assert!(check_release(Some(accepted)).is_ok(), "{accepted}");
        }
        assert!(check_release(None).is_ok(), "unreadable: the probe decides");
        assert!(check_release(Some("unparseable")).is_ok());
    }

    #[test]
    fn a_ring_without_a_required_feature_or_opcode_is_refused_naming_it() {
        let features = check_ring(true, true, |_| true).unwrap();
        assert!(features.send_zc);
        let without_send_zc = check_ring(true, true, |code| code != opcode::SendZc::CODE);
        assert!(!without_send_zc.unwrap().send_zc, "SEND_ZC is optional");

        let missing = |ext_arg, nodrop, lacking: u8| {
            let error = check_ring(ext_arg, nodrop, |code| code != lacking).unwrap_err();
            let UnavailableCause::KernelMissingFeature(what) = error.cause() else {
                panic!("not a missing feature: {error}");
            };
            assert!(error.to_string().contains(what), "{error}");
            what
        };
        assert!(missing(false, true, u8::MAX).contains("IORING_FEAT_EXT_ARG"));
        assert!(missing(true, false, u8::MAX).contains("IORING_FEAT_NODROP"));
        for (code, name) in OPCODES_REQUIRED {
            assert_eq!(missing(true, true, code), name);
        }
    }
}
