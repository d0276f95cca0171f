//! The node-wide items of the check: kernel, io_uring, resource limits, CPUs, memory
//! settings.

use super::{parse_kernel_version, read_trimmed, Item, Status, KERNEL_MIN};
use super::{MEMLOCK_WARN_BYTES, OPEN_FILES_FAIL, OPEN_FILES_WARN};

pub fn kernel() -> Item {
    const NAME: &str = "kernel";
    let Some(release) = read_trimmed("/proc/sys/kernel/osrelease") else {
        return Item::warn(NAME, "cannot read /proc/sys/kernel/osrelease", "");
    };
    match parse_kernel_version(&release) {
        Some(version) => Item::judged(
            NAME,
            version >= KERNEL_MIN,
            Status::Fail,
            format!("Linux {release}"),
            "ringlog's runtime needs Linux 5.19 or newer (io_uring's cooperative task work)",
        ),
        None => Item::warn(NAME, format!("unrecognised release {release}"), ""),
    }
}

/// Sets a ring up for real, the way the runtime does, and reads the sysctl.
pub fn io_uring() -> Item {
    const NAME: &str = "io_uring";
    let sysctl = read_trimmed("/proc/sys/kernel/io_uring_disabled");
    let sysctl_found = sysctl.as_deref().map_or_else(String::new, |value| {
        format!(", kernel.io_uring_disabled={value}")
    });
    // `block_on` sets up a ring with the features the runtime needs, as a shard does.
    match ringlog_engine::rt::block_on(async {}) {
        Ok(()) => Item::ok(NAME, format!("a ring was set up{sysctl_found}")),
        Err(error) => Item::fail(
            NAME,
            format!("{}{sysctl_found}", error.cause()),
            error.cause().remedy(),
        ),
    }
}

pub fn memlock() -> Item {
    const NAME: &str = "RLIMIT_MEMLOCK";
    let Some(limit) = rlimit(libc::RLIMIT_MEMLOCK) else {
        return Item::warn(NAME, "getrlimit failed", "");
    };
    let found = limit.map_or_else(|| "unlimited".to_owned(), super::human_bytes);
    // Kernels from 5.12 charge ring memory to the memory cgroup, not to this limit.
    let charged = read_trimmed("/proc/sys/kernel/osrelease")
        .and_then(|release| parse_kernel_version(&release))
        .is_none_or(|version| version < (5, 12));
    Item::judged(
        NAME,
        !charged || limit.is_none_or(|bytes| bytes >= MEMLOCK_WARN_BYTES),
        Status::Warn,
        format!("{found} (rings are charged to it only before Linux 5.12)"),
        "raise it: LimitMEMLOCK=infinity in the unit, or `ulimit -l unlimited`",
    )
}

pub fn open_files() -> Item {
    const NAME: &str = "open files";
    let Some(limit) = rlimit(libc::RLIMIT_NOFILE) else {
        return Item::warn(NAME, "getrlimit failed", "");
    };
    let limit = limit.unwrap_or(u64::MAX);
    let found = format!("RLIMIT_NOFILE {limit}");
    let fix = "raise it: LimitNOFILE=1048576 in the unit, or `ulimit -n 1048576`";
    if limit < OPEN_FILES_FAIL {
        Item::fail(NAME, found, fix)
    } else {
        Item::judged(NAME, limit >= OPEN_FILES_WARN, Status::Warn, found, fix)
    }
}

pub fn cores() -> Item {
    const NAME: &str = "cores";
    let allowed = ringlog_engine::rt::allowed_cpus().len();
    Item::judged(
        NAME,
        allowed >= 2,
        Status::Warn,
        format!("{allowed} allowed to this process (one shard each)"),
        "one core runs the shard, the network and the client alike; give ringlog 2 or more",
    )
}

pub fn cpu_governor() -> Item {
    const NAME: &str = "CPU governor";
    let mut governors: Vec<String> = (0..ringlog_engine::rt::allowed_cpus().len().max(1))
        .filter_map(|cpu| {
            read_trimmed(format!(
                "/sys/devices/system/cpu/cpu{cpu}/cpufreq/scaling_governor"
            ))
        })
        .collect();
    governors.sort();
    governors.dedup();
    if governors.is_empty() {
        return Item::ok(
            NAME,
            "no cpufreq in sysfs (a VM, or frequency scaling off): nothing to set",
        );
    }
    let found = governors.join(", ");
    Item::judged(
        NAME,
        governors.iter().all(|governor| governor == "performance"),
        Status::Warn,
        found,
        "`cpupower frequency-set -g performance`: a shard that sleeps between completions \
         wakes on a slow clock otherwise",
    )
}

pub fn transparent_huge_pages() -> Item {
    const NAME: &str = "transparent huge pages";
    let Some(setting) = read_trimmed("/sys/kernel/mm/transparent_hugepage/enabled") else {
        return Item::ok(NAME, "not configurable here");
    };
    let chosen = selected_choice(&setting).unwrap_or(&setting).to_owned();
    Item::judged(
        NAME,
        chosen != "always",
        Status::Warn,
        format!("enabled = {chosen}"),
        "`echo madvise > /sys/kernel/mm/transparent_hugepage/enabled`: with `always`, \
         khugepaged compaction stalls add tail latency; ringlog asks for huge pages where \
         it wants them",
    )
}

/// The `vm.dirty_*` settings bound how much buffered (page cache) data can be unwritten:
/// they matter for `ringlog.io.mode = buffered` and for anything else on the node.
pub fn dirty_settings() -> Item {
    const NAME: &str = "vm.dirty_*";
    let read = |key: &str| {
        read_trimmed(format!("/proc/sys/vm/{key}")).and_then(|value| value.parse::<u64>().ok())
    };
    let (Some(ratio), Some(background), Some(expire)) = (
        read("dirty_ratio"),
        read("dirty_background_ratio"),
        read("dirty_expire_centisecs"),
    ) else {
        return Item::warn(NAME, "cannot read /proc/sys/vm", "");
    };
    let bytes = read("dirty_bytes").unwrap_or(0);
    let found = format!(
        "dirty_ratio {ratio} %, dirty_background_ratio {background} %, \
         dirty_expire_centisecs {expire}{}",
        if bytes > 0 {
            format!(", dirty_bytes {bytes}")
        } else {
            String::new()
        }
    );
    // With buffered I/O, a large dirty_ratio lets gigabytes pile up and then stall every
    // writer at once; Kafka and Redpanda guides set the background ratio low for the same
    // reason.
    Item::judged(
        NAME,
        bytes > 0 || (ratio <= 40 && background <= 10),
        Status::Warn,
        found,
        "for buffered I/O, keep writeback steady: `sysctl vm.dirty_background_ratio=5 \
         vm.dirty_ratio=20` (direct I/O, the default, does not use the page cache)",
    )
}

/// The bracketed choice of a sysfs multiple-choice file: `always [madvise] never`.
pub(super) fn selected_choice(setting: &str) -> Option<&str> {
    let start = setting.find('[')?;
    let end = setting[start..].find(']')?;
    Some(&setting[start + 1..start + end])
}

/// The soft limit of `resource`: `Some(None)` when unlimited, `None` if it cannot be read.
#[allow(clippy::option_option)]
fn rlimit(resource: libc::__rlimit_resource_t) -> Option<Option<u64>> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit; getrlimit only writes it.
    let result = unsafe { libc::getrlimit(resource, &raw mut limit) };
    if result != 0 {
        return None;
    }
    Some((limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_selected_choice_is_the_bracketed_one() {
        assert_eq!(selected_choice("always [madvise] never"), Some("madvise"));
        assert_eq!(selected_choice("[always] madvise never"), Some("always"));
        assert_eq!(selected_choice("madvise"), None);
    }

    #[test]
    fn this_machine_has_io_uring_and_limits_to_read() {
        assert_eq!(io_uring().status, Status::Ok, "{}", io_uring());
        assert!(rlimit(libc::RLIMIT_NOFILE).is_some());
        assert_ne!(open_files().found, "getrlimit failed");
    }
}
