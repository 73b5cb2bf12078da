#!/usr/bin/env python3
"""Regenerates docs/benchmarks.md: starts a release `millrace` on a temp data dir, drives it with
`millrace-bench` (librdkafka), reads the broker's CPU time and memory from /proc/<pid>, measures
same-run baselines (sequential write + fdatasync on the same disk, loopback TCP copy), and writes
every figure beside its baseline as a ratio.

    cargo build --release --bin millrace -p millrace-bench && python3 bench/report.py

Options: --quick (smaller runs, for a smoke test), --out PATH (default docs/benchmarks.md).
"""

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BROKER = os.path.join(ROOT, "target/release/millrace")
BENCH = os.path.join(ROOT, "target/release/millrace-bench")
TICK = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return -1


def bench(*args):
    r = subprocess.run([BENCH, *args, "--json"], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"millrace-bench {' '.join(args)} failed:\n{r.stdout}{r.stderr}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def baseline(*args):
    out = subprocess.run([BENCH, *args], check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs/benchmarks.md"))
    a = ap.parse_args()
    for b in (BROKER, BENCH):
        if not os.path.exists(b):
            sys.exit(f"{b} missing: cargo build --release --bin millrace -p millrace-bench")
    scale = 0.2 if a.quick else 1.0
    data = tempfile.mkdtemp(prefix="millrace-bench-", dir=os.path.join(ROOT, "target"))
    port = free_port()
    bs = f"127.0.0.1:{port}"
    log = open(os.path.join(data, "broker.log"), "w")
    broker = subprocess.Popen([BROKER, "serve", "--listen", bs, "--data-dir", os.path.join(data, "d")],
                              stderr=log, env={**os.environ, "RUST_LOG": "warn"})
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                time.sleep(0.05)
        time.sleep(0.5)
        pid = broker.pid
        idle_rss = rss_mb(pid)
        rows = []

        def settle():
            # Each run starts with the page cache's dirty data written back, so that one run's
            # writeback does not land on the next run's fsyncs.
            os.sync()
            time.sleep(1)

        def produce(name, size, acks, codec, n, throughput=-1):
            settle()
            c0 = cpu_seconds(pid)
            r = bench("produce", "--bootstrap-server", bs, "--topic", name, "--num-records", str(n),
                      "--record-size", str(size), "--acks", acks, "--compression", codec,
                      "--throughput", str(throughput))
            r["broker_cpu_s"] = cpu_seconds(pid) - c0
            r["gb"] = n * size / 1e9
            return r

        disk = {}
        for chunk in (65536, 1 << 20):
            disk[chunk] = baseline("baseline-disk", "--dir", data, "--bytes", str(int(256e6 * scale)),
                                   "--chunk", str(chunk), "--fsync-every-chunk")["mb_per_sec"]
        tcp = baseline("baseline-tcp", "--bytes", str(int(2e9 * scale)))["mb_per_sec"]

        results = {}
        for size, n in ((100, int(2_000_000 * scale)), (1024, int(400_000 * scale))):
            for acks in ("1", "all"):
                for codec in ("none", "lz4"):
                    topic = f"p-{size}-{acks}-{codec}"
                    results[(size, acks, codec)] = produce(topic, size, acks, codec, n)
        loaded_rss = rss_mb(pid)

        # Latency at half of the measured maximum rate (1 KiB, acks=all, uncompressed).
        peak = results[(1024, "all", "none")]["records_per_sec"]
        half = produce("p-latency", 1024, "all", "none", int(max(peak * 10 * scale, 1000)), int(peak / 2))

        # Consume the 1 KiB acks=all topic.
        settle()
        n = int(400_000 * scale)
        c0 = cpu_seconds(pid)
        cons = bench("consume", "--bootstrap-server", bs, "--topic", "p-1024-all-none", "--messages", str(n))
        cons["broker_cpu_s"] = cpu_seconds(pid) - c0
        cons["gb"] = n * 1024 / 1e9

        settle()
        e2e = bench("e2e-latency", "--bootstrap-server", bs, "--topic", "e2e", "--rate", "1000",
                    "--seconds", str(int(10 * scale) or 2), "--record-size", "1024")
        final_rss = rss_mb(pid)
    finally:
        broker.send_signal(signal.SIGTERM)
        try:
            broker.wait(30)
        except subprocess.TimeoutExpired:
            broker.kill()
        log.close()
        shutil.rmtree(data, ignore_errors=True)

    def cpu_per_gb(r):
        return r["broker_cpu_s"] / r["gb"]

    lines = []
    w = lines.append
    w("# Benchmarks\n")
    w(f"Generated by `python3 bench/report.py` on {datetime.date.today()} ({platform.node()}, "
      f"{os.cpu_count()} cores, kernel {platform.release()}{', --quick' if a.quick else ''}). "
      "The broker is the release build on a fresh data directory under `target/`; the client is "
      "`millrace-bench` (librdkafka via the `rdkafka` crate, `linger.ms=5`, `batch.size=1MiB`, "
      "idempotence off) on the same machine, so client and broker share the 2 cores. Broker CPU "
      "is utime+stime of the broker process from `/proc/<pid>/stat` over each run. Baselines run "
      "in the same invocation: sequential `write` + `fdatasync` per chunk on the same filesystem "
      "(each run starts after `sync`, so earlier runs' writeback does not land on it) "
      "(`millrace-bench baseline-disk`) and a loopback TCP copy (`baseline-tcp`). Ratios are "
      "figure / baseline.\n")
    w(f"Baselines: disk write+fdatasync {disk[65536]:.0f} MB/s (64 KiB chunks), "
      f"{disk[1 << 20]:.0f} MB/s (1 MiB chunks); loopback TCP {tcp:.0f} MB/s.\n")
    w("## Produce\n")
    w("| record | acks | codec | records/s | MB/s | vs disk (1 MiB fsync) | vs TCP | p50 ms | p99 ms | p99.9 ms | broker CPU s/GB |")
    w("|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for (size, acks, codec), r in results.items():
        lat = r["latency_ms"]
        w(f"| {size} B | {acks} | {codec} | {r['records_per_sec']:.0f} | {r['mb_per_sec']:.1f} | "
          f"{r['mb_per_sec'] / disk[1 << 20]:.2f} | {r['mb_per_sec'] / tcp:.2f} | {lat['p50']:.1f} | "
          f"{lat['p99']:.1f} | {lat['p999']:.1f} | {cpu_per_gb(r):.2f} |")
    w("\nUnthrottled runs queue in the client, so their latencies measure the queue; see the "
      "half-rate run below for latency. With acks=all the broker's CPU includes the page-cache "
      "writeback that its `fdatasync` calls perform (it runs in the broker's io_uring worker "
      "threads); with acks=1 the kernel's flusher threads do that work and it is not counted, "
      "which is most of the difference between the two, and why acks=all figures vary from run "
      "to run.\n")
    lat = half["latency_ms"]
    w("## Produce latency at 50% of the maximum rate (1 KiB, acks=all)\n")
    w(f"{half['records_per_sec']:.0f} records/s ({half['mb_per_sec']:.1f} MB/s): p50 {lat['p50']:.2f} ms, "
      f"p95 {lat['p95']:.2f} ms, p99 {lat['p99']:.2f} ms, p99.9 {lat['p999']:.2f} ms, max {lat['max']:.2f} ms; "
      f"broker CPU {cpu_per_gb(half):.2f} s/GB.\n")
    w("## Consume (1 KiB records, no group, all partitions assigned)\n")
    w(f"{cons['records_per_sec']:.0f} records/s, {cons['mb_per_sec']:.1f} MB/s "
      f"({cons['mb_per_sec'] / tcp:.2f} of loopback TCP), first record after {cons['first_record_ms']:.0f} ms; "
      f"broker CPU {cpu_per_gb(cons):.3f} s/GB.\n")
    el = e2e["latency_ms"]
    w("## End-to-end latency (1 KiB at 1000 records/s, acks=all, from scheduled send time)\n")
    w(f"p50 {el['p50']:.2f} ms, p95 {el['p95']:.2f} ms, p99 {el['p99']:.2f} ms, p99.9 {el['p999']:.2f} ms, "
      f"max {el['max']:.2f} ms.\n")
    w("## Broker memory\n")
    w(f"Resident: {idle_rss:.0f} MB idle at start, {loaded_rss:.0f} MB after the produce runs, "
      f"{final_rss:.0f} MB at the end (VmRSS includes mapped segment pages that were read).\n")
    with open(a.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
