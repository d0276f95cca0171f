# Shared by the *-vs-limits.sh scripts (sourced, not run): the machine description every
# result directory starts with, and what precedes every run: writeback, a cache drop, and
# warm or cold memory.

# machine_info DIR EXTRA…: commit, CPU, memory, load, the file system of DIR and the
# block devices, then the output of each EXTRA command (tool versions), to stdout.
machine_info() {
    local dir=$1
    shift
    echo "commit: $(git rev-parse HEAD) (dirty files: $(git status --short | wc -l))"
    echo "nproc: $(nproc)"; uname -a; grep -m1 'model name' /proc/cpuinfo; grep MemTotal /proc/meminfo
    echo "load: $(cat /proc/loadavg)"; ps -eo pcpu,comm --sort=-pcpu | sed -n 2,4p
    df -T "$dir"; lsblk -o NAME,TYPE,SIZE,ROTA,MODEL,MOUNTPOINTS
    local extra
    for extra in "$@"; do eval "$extra"; done
}

# Memory temperature. This VM hands the memory its guest frees back to the host
# (virtio-balloon free page reporting: freed 2 MiB blocks are reported from 2 s after they
# are freed, all of them within about 30 s), and the first touch of a page the host took
# back faults on the host, which slows whatever fills memory then, a buffered run's page
# cache first (see BENCHMARKS.md, "Cold memory"). So every script runs in one of two modes,
# chosen by a leading --cold (memory_mode), printed at its start and above its summary:
#
#   warm (default)  settle writes dirty pages back, drops the caches, then warm_memory
#                   faults in WARM_BYTES (the run's working set: the page cache it fills
#                   and the process) and frees them; the run starts at once, while those
#                   pages are still the guest's.
#   cold (--cold)   settle writes dirty pages back, drops the caches and waits
#                   COLD_WAIT_S for the freed memory to be handed back.
#
# Env: WARM_BYTES (overrides the script's working set), WARM_RESERVE_BYTES (memory
# warm_memory leaves untouched; default 2 GiB), COLD_WAIT_S (default 40).
MEMORY=warm
WARM_RESERVE_BYTES=${WARM_RESERVE_BYTES:-$((2 << 30))}
COLD_WAIT_S=${COLD_WAIT_S:-40}

# memory_mode [--cold]: sets MEMORY from the script's first argument; the caller shifts
# it away when this returns 0.
memory_mode() {
    [ "${1:-}" = --cold ] || return 1
    MEMORY=cold
}

# memory_note: one line saying which memory the script's figures were measured on.
memory_note() {
    if [ "$MEMORY" = cold ]; then
        echo "memory: cold: before every run the caches were dropped and the freed memory" \
            "given ${COLD_WAIT_S} s to go back to the host"
    else
        echo "memory: warm: before every run, after the cache drop, up to" \
            "$(to_gib "$WARM_BYTES") GiB (the run's working set) were faulted in and freed"
    fi
}

# to_bytes SIZE: 4GiB, 4G, 512MiB or a byte count, as bytes.
to_bytes() {
    local size=${1%iB}
    numfmt --from=iec "${size%B}"
}

to_gib() {
    awk -v bytes="$1" 'BEGIN { printf "%.1f", bytes / 2^30 }'
}

# warm_memory BYTES: writes one byte into every page of BYTES of fresh anonymous memory
# (at most what the kernel reports available, less WARM_RESERVE_BYTES), then frees it. The
# writes are what matters: each faults a page in; reading /dev/zero into /dev/null or
# allocating without writing would touch nothing.
warm_memory() {
    python3 - "$1" "$WARM_RESERVE_BYTES" <<'PY'
import mmap
import sys

wanted, reserve = int(sys.argv[1]), int(sys.argv[2])
with open("/proc/meminfo") as meminfo:
    fields = dict(line.split(":", 1) for line in meminfo)
available = int(fields["MemAvailable"].split()[0]) * 1024
pages = max(0, min(wanted, available - reserve)) // mmap.PAGESIZE
if pages:
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
    memory = mmap.mmap(-1, pages * mmap.PAGESIZE, flags=flags)
    memory[:: mmap.PAGESIZE] = b"\1" * pages
    memory.close()
PY
}

# Writes dirty pages back and empties the page cache so one run's writeback does not land
# in the next run's timing (needs root; skipped with a note otherwise), then warms memory
# or lets it go cold (MEMORY, above). Call it right before the run it prepares.
settle() {
    sync
    if [ -w /proc/sys/vm/drop_caches ]; then echo 3 >/proc/sys/vm/drop_caches; else
        echo "note: cannot drop caches (not root)" >&2; fi
    sleep 1
    if [ "$MEMORY" = cold ]; then sleep "$COLD_WAIT_S"; else warm_memory "$WARM_BYTES"; fi
}
