#!/usr/bin/env python3
"""Heap allocations per produce request in steady state: counts the broker's calls to libc
`malloc`/`realloc` with a perf uprobe while `millrace-bench` sends one single-partition,
single-batch acks=all produce request at a time (500 records/s, linger.ms=0: each record is
its own request). Needs root and `perf` (Debian: linux-perf).

    cargo build --release -p millrace-broker -p millrace-bench && python3 bench/allocs.py

`--where` also records the call stacks (DWARF) and prints the allocating call sites.
"""

import argparse
import collections
import os
import re
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from report import BENCH, BROKER, running_broker  # noqa: E402

RECORDS = 2000
RATE = 500


def libc_path():
    out = subprocess.run(["ldd", BROKER], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        if "libc.so" in line and "=>" in line:
            return line.split("=>")[1].split()[0]
    sys.exit("libc not found in ldd output")


def ensure_probes(libc):
    events = subprocess.run(["perf", "list"], capture_output=True, text=True).stdout
    added = []
    for fn in ("malloc", "realloc"):
        if f"probe_libc:{fn}" not in events:
            r = subprocess.run(["perf", "probe", "-x", libc, fn], capture_output=True, text=True)
            if r.returncode != 0:
                sys.exit(f"perf probe failed (root and linux-perf needed):\n{r.stderr}")
            added.append(f"probe_libc:{fn}")
    return added


def call_sites(data):
    """Allocations by their first frame in the broker's own code."""
    out = subprocess.run(["perf", "script", "-i", data], capture_output=True, text=True).stdout
    generic = re.compile(r"^(alloc|alloc_impl\w*|allocate|finish_grow\b.*|grow_one\b.*|push<.*|"
                         r"__GI_\w*|__rust_\w*|exchange_malloc|malloc|realloc)$")
    library = ("alloc::", "core::", "std::", "GuardedAlloc", "hashbrown", "bytes::", "[unknown]")
    sites = collections.Counter()
    for sample in out.split("\n\n"):
        lines = sample.strip().splitlines()[1:]
        names = [re.sub(r"\+0x[0-9a-f]+ \(.*\)$", "", ln.strip().split(" ", 1)[-1]) for ln in lines]
        own = [n for n in names if not generic.match(n) and not any(x in n for x in library)]
        if own:
            sites[own[0]] += 1
    return sites


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--where", action="store_true", help="also print the allocating call sites")
    a = ap.parse_args()
    for b in (BROKER, BENCH):
        if not os.path.exists(b):
            sys.exit(f"{b} missing: cargo build --release -p millrace-broker -p millrace-bench")
    added = ensure_probes(libc_path())
    try:
        with running_broker("millrace-allocs-") as (data, bs, pid):
            def produce(topic, n):
                subprocess.run([BENCH, "produce", "--bootstrap-server", bs, "--topic", topic,
                                "--num-records", str(n), "--record-size", "1024",
                                "--throughput", str(RATE), "--acks", "all", "--json",
                                "--producer-props", "linger.ms=0"],
                               check=True, capture_output=True)
            produce("allocs", 200)  # warm up: topic, connection, buffers
            secs = RECORDS / RATE + 1.5
            # The run's client connects anew (its own connection setup is counted: a handful).
            counter = ["perf", "stat", "-x,", "-e", "probe_libc:malloc,probe_libc:realloc",
                       "-p", str(pid), "--", "sleep", str(secs)]
            if a.where:
                counter = ["perf", "record", "-q", "-e", "probe_libc:malloc", "--call-graph",
                           "dwarf,16384", "-o", os.path.join(data, "allocs.data"), "-p", str(pid),
                           "--", "sleep", str(secs)]
            stat = subprocess.Popen(counter, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                    text=True)
            time.sleep(0.3)
            t = threading.Thread(target=produce, args=("allocs", RECORDS))
            t.start()
            t.join()
            err = stat.communicate()[1]
            if a.where:
                sites = call_sites(os.path.join(data, "allocs.data"))
                total = sum(sites.values())
                print(f"{total / RECORDS:.1f} malloc calls per produce request; by call site:")
                for site, n in sites.most_common(30):
                    print(f"  {n / RECORDS:5.2f}  {site}")
            else:
                counts = {}
                for line in err.splitlines():
                    parts = line.split(",")
                    if len(parts) > 2 and parts[2].startswith("probe_libc:"):
                        counts[parts[2]] = int(parts[0]) if parts[0].isdigit() else 0
                per = sum(counts.values()) / RECORDS
                print(f"{per:.1f} heap allocations (malloc + realloc) per produce request "
                      f"({counts}, {RECORDS} requests)")
    finally:
        for ev in added:
            subprocess.run(["perf", "probe", "-d", ev], capture_output=True)


if __name__ == "__main__":
    main()
