#!/usr/bin/env bash
# Runs the partition-log benchmarks (bench/benches/storage_log.rs) and prints every log figure
# as a ratio to its baseline partner from the same run.
#
#   bench/run-storage-bench.sh                 # the whole suite (2-3 minutes on 2 cores)
#   bench/run-storage-bench.sh append_16KiB    # only benchmarks whose id matches a filter
#   MILLRACE_IO_ENGINE=portable bench/run-storage-bench.sh
#
# Extra arguments go to criterion. Criterion's own output is kept in
# <target>/criterion/storage_log-output.txt; the estimates read here are the
# <target>/criterion/*/*/new/{benchmark,estimates}.json files written by this run (older ones are
# ignored, so a filtered run shows only what it ran).
set -euo pipefail

cd "$(dirname "$0")/.."
target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
criterion_dir="$target_dir/criterion"
mkdir -p "$criterion_dir"
output="$criterion_dir/storage_log-output.txt"
run_started="$(date +%s.%N)"
# Disk and CPU benchmarks on a small machine: anything else running skews them, so say so.
load_before="$(cut -d' ' -f1-3 /proc/loadavg)"

cargo bench -p millrace-bench --bench storage_log -- "$@" 2>&1 | tee "$output"
load_after="$(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "load average (1, 5, 15 min) before: $load_before, after: $load_after"

python3 - "$criterion_dir" "$run_started" <<'PY'
import json
import os
import sys

criterion_dir, run_started = sys.argv[1], float(sys.argv[2])

# (group, log function, baseline function): each log figure and its partner.
PAIRS = [
    ("append_16KiB/nowait", "log_1_appender", "baseline_write_then_fdatasync"),
    ("append_16KiB/durable", "log_1_appender", "baseline_write_fdatasync"),
    ("append_16KiB/durable", "log_8_appenders", "baseline_8_writers_fdatasync"),
    ("append_1MiB/nowait", "log_1_appender", "baseline_write_then_fdatasync"),
    ("append_1MiB/durable", "log_1_appender", "baseline_write_fdatasync"),
    ("append_1MiB/durable", "log_8_appenders", "baseline_8_writers_fdatasync"),
    ("append_16KiB/direct_durable", "log_1_appender", "baseline_odirect_write_fdatasync"),
    ("append_1MiB/direct_durable", "log_1_appender", "baseline_odirect_write_fdatasync"),
    ("read_256MiB/1MiB_reads", "log_read", "baseline_pread"),
    ("read_256MiB/1MiB_reads", "log_read_copy", "baseline_pread"),
    ("lookup_by_offset", "log_read_one_batch", "baseline_sorted_vec_pread"),
    ("lookup_by_timestamp", "log_offset_for_timestamp", "baseline_sorted_vec_pread"),
]
# (group, a, b): how a scales against b (8 appenders against 1).
SCALING = [
    ("append_16KiB/durable", "log_8_appenders", "log_1_appender"),
    ("append_16KiB/durable", "baseline_8_writers_fdatasync", "baseline_write_fdatasync"),
    ("append_1MiB/durable", "log_8_appenders", "log_1_appender"),
    ("append_1MiB/durable", "baseline_8_writers_fdatasync", "baseline_write_fdatasync"),
]

results = {}
for root, _dirs, files in os.walk(criterion_dir):
    if os.path.basename(root) != "new" or "estimates.json" not in files:
        continue
    est_path = os.path.join(root, "estimates.json")
    if os.path.getmtime(est_path) < run_started:
        continue  # from an earlier run
    with open(os.path.join(root, "benchmark.json")) as f:
        bench = json.load(f)
    with open(est_path) as f:
        est = json.load(f)
    # Criterion's headline figure: the slope under linear sampling, else the mean.
    typical = est.get("slope") or est["mean"]
    ns = typical["point_estimate"]
    lo = typical["confidence_interval"]["lower_bound"]
    hi = typical["confidence_interval"]["upper_bound"]
    throughput = bench.get("throughput") or {}
    results[(bench["group_id"], bench.get("function_id"))] = {
        "ns": ns,
        "spread": (hi - lo) / 2 / ns * 100 if ns else 0.0,
        "bytes": throughput.get("Bytes"),
        "elements": throughput.get("Elements"),
    }

if not results:
    sys.exit("no criterion estimates from this run found under " + criterion_dir)


def figure(r):
    if r["bytes"]:
        return "%9.1f MiB/s" % (r["bytes"] / r["ns"] * 1e9 / (1 << 20))
    if r["elements"]:
        return "%9.0f ns/op" % (r["ns"] / r["elements"])
    return "%9.0f ns" % r["ns"]


print()
print("Log figures as a ratio to their same-run baseline (ratio = log speed / baseline speed;")
print("above 1 the log is faster; ± is half the 95% confidence interval of each estimate)")
print()
header = "%-28s %-26s %14s %6s  %-32s %14s %6s  %6s" % (
    "group", "log", "figure", "±", "baseline", "figure", "±", "ratio")
print(header)
print("-" * len(header))
shown = set()
for group, log_fn, base_fn in PAIRS:
    log, base = results.get((group, log_fn)), results.get((group, base_fn))
    if log is None:
        continue
    shown.add((group, log_fn))
    if base is None:
        print("%-28s %-26s %14s %5.1f%%  %-32s %s" % (
            group, log_fn, figure(log), log["spread"], base_fn, "(not run)"))
        continue
    print("%-28s %-26s %14s %5.1f%%  %-32s %14s %5.1f%%  %6.2f" % (
        group, log_fn, figure(log), log["spread"], base_fn, figure(base), base["spread"],
        base["ns"] / log["ns"] if log["ns"] else float("nan")))

unpaired = sorted(k for k in results if k[1] and k[1].startswith("log_") and k not in shown)
for group, fn in unpaired:
    print("%-28s %-26s %14s  (no baseline partner known to this script)" % (
        group, fn, figure(results[(group, fn)])))

lines = []
for group, a, b in SCALING:
    ra, rb = results.get((group, a)), results.get((group, b))
    if ra and rb and ra["bytes"] and rb["bytes"]:
        speed = lambda r: r["bytes"] / r["ns"]
        lines.append("%-24s %-30s vs %-26s %6.2fx" % (group, a, b, speed(ra) / speed(rb)))
if lines:
    print()
    print("Scaling of durable appends with 8 writers (throughput of 8 / throughput of 1)")
    print()
    for line in lines:
        print(line)
PY
