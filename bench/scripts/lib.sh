# Shared by the *-vs-limits.sh scripts (sourced, not run): the machine description every
# result directory starts with, and the pause between write runs.

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

# Writes dirty pages back and empties the page cache so one run's writeback does not land
# in the next run's timing (needs root; skipped with a note otherwise). On VMs that hand
# freed memory back to the host this also makes the next run's page cache cold (see
# BENCHMARKS.md, "Cold memory").
settle() {
    sync
    if [ -w /proc/sys/vm/drop_caches ]; then echo 3 >/proc/sys/vm/drop_caches; else
        echo "note: cannot drop caches (not root)" >&2; fi
    sleep 1
}
