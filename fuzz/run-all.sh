#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 300) on one core each in turn, then merges
# what it found into a minimized corpus in fuzz/regressions/<target>/ (which
# `cargo test --workspace` replays on stable). Prints, per target, the executions and the
# coverage (edges / features) at the start, half way and at the end, and the execution
# that last reached new coverage: little growth in the second half is a plateau, more
# means the target wants a longer run.
#
#   fuzz/run-all.sh [SECONDS] [TARGET...]
#
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`). Working corpora
# stay in fuzz/corpus/<target>/ (not committed); crashes in fuzz/artifacts/<target>/.
set -euo pipefail

cd "$(dirname "$0")"
seconds=${1:-300}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(frame request batch recovery index)
fi
logs=target/fuzz-logs
mkdir -p "$logs"

if [ ! -d corpus ]; then
    cargo run --release --example seeds -- corpus
fi
cargo +nightly fuzz build -O

printf '| target | seconds | executions | cov/ft at start | half way | end | last new coverage at execution | inputs kept | crashes |\n'
printf '|---|---|---|---|---|---|---|---|---|\n'
for target in "${targets[@]}"; do
    mkdir -p "corpus/$target" "regressions/$target" "artifacts/$target"
    log="$logs/$target.log"
    status=0
    cargo +nightly fuzz run -O "$target" "corpus/$target" "regressions/$target" -- \
        -max_total_time="$seconds" -print_final_stats=1 \
        -artifact_prefix="artifacts/$target/" >"$log" 2>&1 || status=$?
    # Coverage ("cov: N ft: M") at the start, half way (by executions) and at the end, and
    # the execution that last reached new coverage ("#N NEW ..." lines).
    read -r execs cov_start cov_half cov_end last_new < <(python3 - "$log" <<'PY'
import re, sys
points, last_new = [], 0
for line in open(sys.argv[1], errors="replace"):
    m = re.match(r"^#(\d+)\s+(\w+)\s+cov: (\d+) ft: (\d+)", line)
    if m:
        points.append((int(m[1]), f"{m[3]}/{m[4]}"))
        if m[2] == "NEW":
            last_new = int(m[1])
if not points:
    print("? ? ? ? ?")
else:
    end = points[-1][0]
    half = [p for p in points if p[0] <= end // 2][-1]
    print(end, points[0][1], half[1], points[-1][1], last_new)
PY
)
    # Keep the crashes found (named crash-*) and a minimized corpus of everything the runs
    # found (the run added its new inputs to corpus/<target>).
    merged=$(mktemp -d)
    find "regressions/$target" -type f ! -name 'crash-*' -delete
    cargo +nightly fuzz run -O "$target" "$merged" "corpus/$target" -- \
        -merge=1 >"$logs/$target.merge.log" 2>&1 || true
    find "$merged" -type f -size -64k -exec cp {} "regressions/$target/" \;
    rm -rf "$merged"
    crashes=$(find "artifacts/$target" -type f | wc -l)
    kept=$(find "regressions/$target" -type f | wc -l)
    printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s (exit %s) |\n' \
        "$target" "$seconds" "$execs" "$cov_start" "$cov_half" "$cov_end" "$last_new" \
        "$kept" "$crashes" "$status"
done
