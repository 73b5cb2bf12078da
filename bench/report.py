#!/usr/bin/env python3
"""Regenerates docs/benchmarks.md: starts a release `millrace` on a temp data dir, drives it with
`millrace-bench` (librdkafka), reads the broker's CPU time and memory from /proc/<pid>, measures
same-run baselines (sequential write + fdatasync on the same disk, loopback TCP copy), and writes
every figure beside its baseline as a ratio.

    cargo build --release -p millrace-broker -p millrace-bench && python3 bench/report.py

Options: --quick (smaller runs, for a smoke test), --out PATH (default docs/benchmarks.md).
"""

import argparse
import contextlib
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
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BROKER = os.path.join(ROOT, "target/release/millrace")
BENCH = os.path.join(ROOT, "target/release/millrace-bench")
TICK = os.sysconf("SC_CLK_TCK")
# Chunk sizes of the disk baseline (write + fdatasync per chunk).
DISK_CHUNKS = (65536, 262144, 1 << 20)
# linger.ms of the latency run: librdkafka's default (5 ms) would put up to 5 ms of client-side
# batching delay into every figure; 1 ms keeps batching and leaves the broker's part visible.
LATENCY_LINGER_MS = 1
# Shares of the unthrottled rate at which latency is measured.
LATENCY_SHARES = (0.5, 0.25)
# Runs per fixed-rate row: their tails vary from run to run on this VM (one stalled second
# decides a 10 s run's p99), so each row is the run with the median p99, beside every run's.
LATENCY_REPEATS = 3
# Runs of each unthrottled 1 KiB acks=all row that sets a broker's maximum (the fixed-rate runs
# take shares of it) and of the consume run: a stall can halve a run of a few seconds here (the
# report of 2026-11-26 took its 50% rate from a 1.2 s run at half the usual rate), so each is the
# median of these runs, beside every run's figures.
MAX_REPEATS = 3
# The page-cache window of the second set of runs (`--log-page-cache-window-bytes`, off by
# default; docs/design/storage.md, "Page-cache window").
WINDOW = 64 << 20
# CPUs the broker may run on: the extra direct runs' network threads.
CPUS = len(os.sched_getaffinity(0))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def rss_mb(pid, field="VmRSS"):
    """A `/proc/<pid>/status` memory figure in MB: `VmRSS` (resident), or `RssAnon` (its
    anonymous part: heap, request buffers, direct I/O tails; the rest is mapped file pages)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    return -1


def memory(pid):
    """(resident, of it anonymous) in MB; anonymous is None where the kernel does not tell
    (`RssAnon` is from Linux 4.5)."""
    anon = rss_mb(pid, "RssAnon")
    return rss_mb(pid), (anon if anon >= 0 else None)


def mb(x):
    return "–" if x is None else f"{x:.0f}"


@contextlib.contextmanager
def running_broker(prefix, *args):
    """A release broker (with extra `serve` arguments `args`) on a free port with a fresh data
    directory under `target/`, stopped and removed afterwards; yields (data directory, bootstrap
    address, pid)."""
    data = tempfile.mkdtemp(prefix=prefix, dir=os.path.join(ROOT, "target"))
    port = free_port()
    bs = f"127.0.0.1:{port}"
    try:
        with open(os.path.join(data, "broker.log"), "w") as log:
            broker = subprocess.Popen(
                [BROKER, "serve", "--listen", bs, "--data-dir", os.path.join(data, "d"), *args],
                stderr=log, env={**os.environ, "RUST_LOG": "warn"})
            try:
                for _ in range(200):
                    if broker.poll() is not None:
                        break
                    try:
                        socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                        break
                    except OSError:
                        time.sleep(0.05)
                time.sleep(0.5)
                if broker.poll() is not None:
                    # A broker that refused its arguments: say why instead of letting the
                    # clients retry forever.
                    with open(os.path.join(data, "broker.log")) as f:
                        raise RuntimeError(f"broker exited with {broker.returncode}: {f.read()[-2000:]}")
                yield data, bs, broker.pid
            finally:
                broker.send_signal(signal.SIGTERM)
                try:
                    broker.wait(30)
                except subprocess.TimeoutExpired:
                    broker.kill()
                    broker.wait()
    finally:
        shutil.rmtree(data, ignore_errors=True)


class StealWatch:
    """CPU time the host took from this VM's vCPUs (the `steal` column of `/proc/stat`) while a
    run lasts, sampled every 100 ms: the total as a share of all CPUs' time, and the worst
    100 ms. A stolen stretch stops broker and client alike and shows up as their latency."""

    def __enter__(self):
        self.worst = 0.0
        self._stop = threading.Event()
        self.t0, self.s0 = time.monotonic(), self._steal()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        secs = time.monotonic() - self.t0
        self.share = (self._steal() - self.s0) / (secs * os.cpu_count()) if secs > 0 else 0.0

    @staticmethod
    def _steal():
        with open("/proc/stat") as f:
            fields = f.readline().split()  # cpu user nice system idle iowait irq softirq steal
        return int(fields[8]) / TICK

    def _sample(self):
        t, s = time.monotonic(), self._steal()
        while not self._stop.wait(0.1):
            t2, s2 = time.monotonic(), self._steal()
            if t2 > t:
                self.worst = max(self.worst, (s2 - s) / ((t2 - t) * os.cpu_count()))
            t, s = t2, s2


def steal_cell(r):
    """`total / worst 100 ms` host steal of a run, in percent."""
    return f"{r['steal_share']:.1%} / {r['steal_worst']:.0%}"


def wakeup_cell(r):
    """`p99.9 / max` wake-up lateness (ms) measured beside a fixed-rate run, or `–`."""
    w = r.get("wakeup_late_ms")
    return f"{w['p999']:.2f} / {w['max']:.2f}" if w else "–"


def settle(drop_caches=True):
    """Starts a run with the page cache's dirty data written back, so that one run's writeback
    does not land on the next run's fsyncs, and (as root) with the clean page cache dropped, so
    that every run grows it from the same state: on this VM the cost of a new page-cache page
    depends on it (docs/performance.md)."""
    os.sync()
    if drop_caches:
        try:
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("3\n")
        except OSError:
            pass
    time.sleep(1)


def client_cell(r, key):
    """`p99 median / worst` (ms) over librdkafka's 1 s windows of a `--print-metrics` figure
    (`rtt`, `int_latency`), or `–`."""
    c = r.get("client", {}).get(f"{key}_ms")
    return f"{c['p99_median_window']:.2f} / {c['p99_worst_window']:.2f}" if c else "–"


def ideal_cell(lat):
    """`p99 / p99.9` (ms) of the ideal writer's records (`baseline-disk --rate-mb`), or `–`."""
    return f"{lat['p99']:.2f} / {lat['p999']:.2f}" if lat else "–"


def runs_cell(r):
    """`p99 / p99.9` (ms) of every run of a fixed-rate row, in the order they ran, each with the
    ideal writer's of its bytes right after it, or `–`."""
    runs = r.get("runs")
    return ", ".join(f"{p99:.2f} / {p999:.2f} (ideal {ideal_cell(ideal)})"
                     for p99, p999, ideal in runs) if runs else "–"


def cpu_per_gb(r):
    """Broker CPU seconds per GB of run `r`."""
    return r["broker_cpu_s"] / r["gb"]


def median_run(runs):
    """The run with the median p99 of `runs` (`median_of`), carrying every run's p99 and p99.9
    and its ideal writer's."""
    r = median_of(runs, lambda x: x["latency_ms"]["p99"])
    r["runs"] = [(x["latency_ms"]["p99"], x["latency_ms"]["p999"], x.get("ideal_latency_ms"))
                 for x in runs]
    return r


def median_of(runs, key):
    """The run with the median `key(run)` of `runs`, carrying every run (`"every"`) in the order
    they ran."""
    r = dict(sorted(runs, key=key)[len(runs) // 2])
    r["every"] = runs
    return r


def every_cell(r):
    """Every run of a repeated unthrottled row (`median_of`), in the order they ran: records/s
    and broker CPU s/GB (with the floor measured right after each run)."""
    def one(x):
        cpu = cpu_per_gb(x)
        f = f" (floor {x['floor_s_per_gb']:.2f})" if "floor_s_per_gb" in x else ""
        return f"{x['records_per_sec']:.0f} records/s at {cpu:.2f} s/GB{f}"
    return "; ".join(one(x) for x in r.get("every", [r]))


def median_cpu(r):
    """The median broker CPU per GB over every run of `r`, and the median floor."""
    every = r.get("every", [r])
    cpus = sorted(cpu_per_gb(x) for x in every)
    floors = sorted(x["floor_s_per_gb"] for x in every)
    return cpus[len(cpus) // 2], floors[len(floors) // 2]


# The columns every fixed-rate table ends with, from the latency's tail to every run's.
TAIL_HEADER = ("max ms | ideal writer p99 / p99.9 ms | broker CPU s/GB | CPU floor s/GB | vs floor | "
               "wake-up late p99.9 / max ms | host steal (run / worst 100 ms) | round trip p99 ms "
               "(median / worst 1 s) | client queue p99 ms (median / worst 1 s) | p99 / p99.9 ms of "
               "each run |")
TAIL_ALIGN = "---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"


def tail_cells(r):
    """The cells under `TAIL_HEADER` of run `r`."""
    cpu = cpu_per_gb(r)
    return (f"{r['latency_ms']['max']:.2f} | {ideal_cell(r.get('ideal_latency_ms'))} | {cpu:.2f} | "
            f"{r['floor_s_per_gb']:.2f} | {cpu / r['floor_s_per_gb']:.2f} | {wakeup_cell(r)} | "
            f"{steal_cell(r)} | {client_cell(r, 'rtt')} | {client_cell(r, 'int_latency')} | "
            f"{runs_cell(r)} |")


def mode_table(w, label, default, unthrottled, paced, more=()):
    """The table of a broker mode: the default broker's unthrottled run, the mode's, and the
    mode's fixed-rate runs, then `more` (label, paced runs at the same rates)."""
    w(f"| broker | rate | records/s sent | MB/s | p50 ms | p99 ms | p99.9 ms | {TAIL_HEADER}")
    w(f"|---|---|---:|---:|---:|---:|---:|{TAIL_ALIGN}")
    for name, rate, r in [("default", "unthrottled", default), (label, "unthrottled", unthrottled),
                          *[(label, f"{s:.0%} of max ({paced[s]['asked']}/s asked)", paced[s])
                            for s in LATENCY_SHARES],
                          *[(other, f"{s:.0%} of {label}'s max ({runs[s]['asked']}/s asked)", runs[s])
                            for other, runs in more for s in LATENCY_SHARES]]:
        lat = r["latency_ms"]
        w(f"| {name} | {rate} | {r['records_per_sec']:.0f} | {r['mb_per_sec']:.1f} | {lat['p50']:.2f} | "
          f"{lat['p99']:.2f} | {lat['p999']:.2f} | {tail_cells(r)}")


# Issue 4's targets (2-core development machine, 1 KiB records, batches of 64 KiB or more).
TARGET_PRODUCE_CPU = 0.35  # broker CPU s per GB produced, acks=all, fsync included
TARGET_CONSUME_CPU = 0.15  # per GB consumed
TARGET_P99_MS, TARGET_P999_MS = 3.0, 10.0  # acks=all at 50% of the maximum rate
TARGET_IDLE_MB = 30


def within_latency(p99, p999):
    return p99 <= TARGET_P99_MS and p999 <= TARGET_P999_MS


def targets_table(w, modes, cons, idle_rss):
    """The targets' table: per broker mode (`modes`: name, unthrottled run, its fixed-rate
    runs), this run's figure beside the kernel's floor at the same moment (or the ideal writer),
    and whether the figure is within the target. The CPU rows give the median over every run
    (`median_of`) and the median of their floors."""
    def yes(ok, floor=None, target=None):
        if ok:
            return "yes"
        return "no (the floor alone is above it)" if floor is not None and floor > target else "no"
    w("| target | broker | this run | floor at the same moment | within |")
    w("|---|---|---:|---:|---|")
    for name, top, _ in modes:
        if top is None:
            continue
        cpu, floor = median_cpu(top)
        every = top.get("every", [top])
        cells = ", ".join(f"{cpu_per_gb(x):.2f}" for x in every)
        floors = ", ".join(f"{x['floor_s_per_gb']:.2f}" for x in every)
        w(f"| CPU per GB produced ≤ {TARGET_PRODUCE_CPU} s (1 KiB, acks=all, unthrottled) | {name} | "
          f"{cpu:.2f} (runs: {cells}) | {floor:.2f} ({floors}) | "
          f"{yes(cpu <= TARGET_PRODUCE_CPU, floor, TARGET_PRODUCE_CPU)} |")
    cpu, floor = median_cpu(cons)
    cells = ", ".join(f"{cpu_per_gb(x):.3f}" for x in cons.get("every", [cons]))
    w(f"| CPU per GB consumed ≤ {TARGET_CONSUME_CPU} s (from the page cache) | default | {cpu:.3f} "
      f"(runs: {cells}) | {floor:.3f} | {yes(cpu <= TARGET_CONSUME_CPU, floor, TARGET_CONSUME_CPU)} |")
    for name, top, paced in modes:
        r = paced[0.5]
        runs = r["runs"]
        ok = sum(within_latency(p99, p999) for p99, p999, _ in runs)
        ideal = sum(1 for _, _, i in runs if i and within_latency(i["p99"], i["p999"]))
        cells = ", ".join(f"{p99:.2f} / {p999:.2f}" for p99, p999, _ in runs)
        ideals = ", ".join(ideal_cell(i) for _, _, i in runs)
        of = "the maximum" if top is not None else "the direct broker's maximum"
        w(f"| p99 ≤ {TARGET_P99_MS:g} ms, p99.9 ≤ {TARGET_P999_MS:g} ms at 50% of {of} "
          f"({r['asked']} records/s asked; the median run sent {r['records_per_sec']:.0f}) | {name} | "
          f"{cells} | {ideals} (ideal writer; "
          f"{ideal} of {len(runs)} within) | {ok} of {len(runs)} runs |")
    w(f"| idle resident memory ≤ {TARGET_IDLE_MB} MB | default | {idle_rss:.0f} MB | – | "
      f"{yes(idle_rss <= TARGET_IDLE_MB)} |")


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
            sys.exit(f"{b} missing: cargo build --release -p millrace-broker -p millrace-bench")
    scale = 0.2 if a.quick else 1.0
    with contextlib.ExitStack() as default_broker:
        data, bs, pid = default_broker.enter_context(running_broker("millrace-bench-"))
        idle_rss, idle_anon = memory(pid)
        rows = []

        def produce(name, size, acks, codec, n, throughput=-1, *extra, floor=True, on=None):
            # `on`: another broker's (data, bootstrap, pid, extra baseline-disk arguments for
            # its floor) instead of this one.
            d_, bs_, pid_, floor_args = on or (data, bs, pid, [])
            settle()
            c0 = cpu_seconds(pid_)
            # Beside a fixed-rate run, for as long as it sends: how late a sleeping thread wakes
            # up on this machine at the same moment (`baseline-wakeup`).
            probe = throughput > 0 and subprocess.Popen(
                [BENCH, "baseline-wakeup", "--seconds", str(n / throughput)],
                stdout=subprocess.PIPE, text=True)
            try:
                # A fixed-rate run also reports librdkafka's own view: the requests' round trip
                # to the broker and the records' time in the client's queue.
                metrics = ["--print-metrics"] if throughput > 0 else []
                with StealWatch() as steal:
                    r = bench("produce", "--bootstrap-server", bs_, "--topic", name,
                              "--num-records", str(n), "--record-size", str(size), "--acks", acks,
                              "--compression", codec, "--throughput", str(throughput), *metrics,
                              *extra)
                r["broker_cpu_s"] = cpu_seconds(pid_) - c0
                if probe:
                    out, _ = probe.communicate()
                    if probe.returncode != 0:
                        sys.exit(f"millrace-bench baseline-wakeup failed ({probe.returncode})")
                    r["wakeup_late_ms"] = json.loads(out.strip().splitlines()[-1])["late_ms"]
            finally:
                if probe and probe.poll() is None:
                    probe.kill()
                    probe.wait()
            r["steal_share"], r["steal_worst"] = steal.share, steal.worst
            r["gb"] = n * size / 1e9
            r["topic"] = name
            if codec == "none" and floor:
                # The kernel's share of the same bytes, from the same starting state, measured
                # right after (the cost of page-cache memory on this VM drifts, so a floor from
                # the start of the run would not do): unthrottled, writing them with an
                # fdatasync per MiB; at a fixed rate, as an ideal group-committing writer at the
                # same rate, in requests of the run's own average size, whose records' latency
                # is the row's latency floor on this disk at that moment.
                settle()
                if throughput > 0:
                    request = r.get("client", {}).get("batch_bytes_avg") or size * throughput / 1000
                    request = max(4096, -(-int(request) // 4096) * 4096)
                    pace = ["--chunk", str(request), "--rate-mb", str(throughput * size / 1e6),
                            "--record-size", str(size)]
                else:
                    pace = ["--chunk", str(1 << 20)]
                d = baseline("baseline-disk", "--dir", d_, "--bytes", str(n * size),
                             "--fsync-every-chunk", *pace, *floor_args)
                r["floor_s_per_gb"] = d["cpu_s_per_gb"] + tcp["recv_cpu_s_per_gb"]
                r["ideal_latency_ms"] = d.get("record_latency_ms")
            return r

        disk = {}
        for chunk in DISK_CHUNKS:
            settle()
            disk[chunk] = baseline("baseline-disk", "--dir", data, "--bytes", str(int(256e6 * scale)),
                                   "--chunk", str(chunk), "--fsync-every-chunk")
        # The same without the page cache (O_DIRECT): what a log that bypassed it would pay.
        disk_direct = {}
        for chunk in DISK_CHUNKS:
            settle()
            disk_direct[chunk] = baseline("baseline-disk", "--dir", data, "--bytes",
                                          str(int(256e6 * scale)), "--chunk", str(chunk),
                                          "--fsync-every-chunk", "--direct")
        tcp = baseline("baseline-tcp", "--bytes", str(int(2e9 * scale)), "--chunk", str(1 << 20))
        tcp_sendfile = baseline("baseline-tcp", "--bytes", str(int(2e9 * scale)), "--chunk", str(1 << 20),
                                "--sendfile-dir", data)
        wakeup = baseline("baseline-wakeup", "--seconds", str(max(10 * scale, 2)))
        # The kernel's cost of sending a GB over loopback TCP (the cheaper way): what any
        # broker pays for a consumed GB.
        consume_floor = min(tcp_sendfile["send_cpu_s_per_gb"], tcp["send_cpu_s_per_gb"])

        results = {}
        for size, n in ((100, int(2_000_000 * scale)), (1024, int(400_000 * scale))):
            for acks in ("1", "all"):
                for codec in ("none", "lz4"):
                    topic = f"p-{size}-{acks}-{codec}"
                    if (size, acks, codec) == (1024, "all", "none"):
                        # The default broker's maximum: the median of MAX_REPEATS runs.
                        results[(size, acks, codec)] = median_of(
                            [produce(f"{topic}-{i}", size, acks, codec, n)
                             for i in range(MAX_REPEATS)], lambda x: x["records_per_sec"])
                    else:
                        results[(size, acks, codec)] = produce(topic, size, acks, codec, n)
        loaded_rss, loaded_anon = memory(pid)

        # Latency at fractions of the measured maximum rate (1 KiB, acks=all, uncompressed), for
        # 10 s each.
        def paced_runs(prefix, peak, on=None):
            # Fixed-rate runs at shares of `peak` records/s, LATENCY_REPEATS of each (topics
            # `<prefix>-latency-<share>-<run>`); each share's figures are its median run's.
            out = {}
            for share in LATENCY_SHARES:
                rate = int(peak * share)
                out[share] = median_run([
                    produce(f"{prefix}-latency-{int(share * 100)}-{i}", 1024, "all", "none",
                            int(max(rate * 10 * scale, 1000)), rate,
                            "--producer-props", f"linger.ms={LATENCY_LINGER_MS}", on=on)
                    for i in range(LATENCY_REPEATS)])
                # The rate asked for; a run that falls behind sends less (`records_per_sec`).
                out[share]["asked"] = rate
            return out

        def consume(pid_, bs_, topic, n):
            # All of `topic` (`n` records of 1 KiB) by one consumer, with the broker's CPU.
            c0 = cpu_seconds(pid_)
            r = bench("consume", "--bootstrap-server", bs_, "--topic", topic, "--num-records", str(n))
            r["broker_cpu_s"] = cpu_seconds(pid_) - c0
            r["gb"] = n * 1024 / 1e9
            r["floor_s_per_gb"] = consume_floor
            return r

        paced = paced_runs("p", results[(1024, "all", "none")]["records_per_sec"])

        # Consume 1 KiB records just produced, from the page cache as a consumer that keeps up does
        # (no floor run after this produce: it would drop the page cache).
        n = int(1_000_000 * scale)
        produce("c-1024", 1024, "all", "none", n, floor=False)
        settle(drop_caches=False)
        # The same topic MAX_REPEATS times (still in the page cache); the median by CPU per GB.
        cons = median_of([consume(pid, bs, "c-1024", n) for _ in range(MAX_REPEATS)],
                         cpu_per_gb)

        settle()
        e2e = bench("e2e-latency", "--bootstrap-server", bs, "--topic", "e2e", "--rate", "1000",
                    "--seconds", str(int(10 * scale) or 2), "--record-size", "1024")
        final_rss, final_anon = memory(pid)

        # The default broker's run of the size the other brokers' unthrottled runs have (one run:
        # their tables' first row), then those brokers: the page-cache window on (its floor
        # drops its pages the same way) and direct I/O.
        n = int(3_000_000 * scale)
        unwindowed = produce("l-1024-all", 1024, "all", "none", n)
        # Stopped, and its data directory removed, before the other brokers start: with theirs
        # (up to ≈ 30 GB for the direct broker) the disk would hold ≈ 55 GB at once.
        default_broker.close()

        def unthrottled_then_paced(prefix, on):
            # Another broker's unthrottled runs (topics `<prefix>-1024-all-<run>`; the median of
            # MAX_REPEATS, its maximum), then its fixed-rate runs at shares of that rate.
            top = median_of([produce(f"{prefix}-1024-all-{i}", 1024, "all", "none", n, on=on)
                             for i in range(MAX_REPEATS)], lambda x: x["records_per_sec"])
            return top, paced_runs(prefix, top["records_per_sec"], on=on)
        with running_broker("millrace-bench-window-", "--log-page-cache-window-bytes",
                            str(WINDOW)) as (wdata, wbs, wpid):
            windowed, wpaced = unthrottled_then_paced(
                "w", (wdata, wbs, wpid, ["--drop-behind", str(WINDOW)]))

        # The same on a broker writing with direct I/O; its floor writes with O_DIRECT too. Then
        # a consumer from the beginning: all but the newest 8 MiB come from the disk.
        with running_broker("millrace-bench-direct-", "--log-direct-io") as (ddata, dbs, dpid):
            direct, dpaced = unthrottled_then_paced("d", (ddata, dbs, dpid, ["--direct"]))
            direct_rss, direct_anon = memory(dpid)  # before the consumer maps segment pages
            settle(drop_caches=True)
            dcons = consume(dpid, dbs, direct["topic"], n)
        # Its fixed-rate runs again at the same rates, with a network thread per CPU instead of
        # the default one fewer (client and broker share the cores here; docs/performance.md).
        with running_broker("millrace-bench-direct-all-", "--log-direct-io",
                            "--num-network-threads", str(CPUS)) as (d1data, d1bs, d1pid):
            d1paced = paced_runs("d1", direct["records_per_sec"],
                                 on=(d1data, d1bs, d1pid, ["--direct"]))

    lines = []
    w = lines.append
    w("# Benchmarks\n")
    w(f"Generated by `python3 bench/report.py` on {datetime.date.today()} ({platform.node()}, "
      f"{os.cpu_count()} cores, kernel {platform.release()}{', --quick' if a.quick else ''}). "
      "The broker is the release build on a fresh data directory under `target/`; the client is "
      "`millrace-bench` (librdkafka via the `rdkafka` crate, `linger.ms=5` (1 in the fixed-rate runs), `batch.size=1MiB`, "
      "values of random uppercase letters as in `kafka-producer-perf-test`, "
      "idempotence off) on the same machine, so client and broker share the 2 cores. Broker CPU "
      "is utime+stime of the broker process from `/proc/<pid>/stat` over each run. Baselines run "
      "in the same invocation: sequential `write` + `fdatasync` per chunk on the same filesystem "
      "(each run starts after `sync` and, as root, a `drop_caches`, so earlier runs' writeback and page cache do not land on it) "
      "(`millrace-bench baseline-disk`) and a loopback TCP copy (`baseline-tcp`). Ratios are "
      "figure / baseline. Figures on this VM vary from run to run, CPU per GB by up to 2× (why, and "
      "where the time goes: `docs/performance.md`).\n")
    mib = 1 << 20
    # The kernel's own cost of taking 1 GB in over loopback TCP and writing + fdatasyncing it in
    # 1 MiB chunks: what any broker on this machine pays before doing anything of its own.
    produce_floor = disk[mib]["cpu_s_per_gb"] + tcp["recv_cpu_s_per_gb"]
    w("## Issue 4's targets in this run\n")
    targets_table(w, [("default", results[(1024, "all", "none")], paced),
                      ("page-cache window", windowed, wpaced), ("direct I/O", direct, dpaced),
                      (f"direct I/O, {CPUS} network threads", None, d1paced)],
                  cons, idle_rss)
    w("\nEach figure is this run's, beside what the kernel alone costs for the same work at the "
      "same moment (the floors below; for latency, the ideal writer of each fixed-rate run's "
      f"bytes, measured right after it). The CPU rows give the median CPU per GB of "
      f"{MAX_REPEATS} runs and, apart, the median of their floors (each produce run's measured "
      "right after it, so the two medians may come from different runs; the consume floor is "
      "the TCP sender's at the start), beside every run's; the tables below show the run with "
      "the median records/s (for consume, this median), whose CPU per GB can differ. Where a floor is above its target, no broker could "
      "meet that target on this machine at that moment. The latency row gives each of the "
      f"{LATENCY_REPEATS} runs at 50% of that broker's own maximum (with a network thread per CPU, "
      "of the direct broker's), p99 / p99.9 in ms, in the order they ran. The page-cache window, "
      "direct I/O and a network thread per CPU are off by default; the sections "
      "below have every figure.\n")
    w("Baselines (same run):\n")
    w("| baseline | MB/s | CPU s/GB | p50 ms | p99 ms | p99.9 ms |")
    w("|---|---:|---:|---:|---:|---:|")
    for chunk in DISK_CHUNKS:
        d = disk[chunk]
        lat = d["chunk_latency_ms"]
        w(f"| disk: write + fdatasync per {chunk // 1024} KiB | {d['mb_per_sec']:.0f} | {d['cpu_s_per_gb']:.2f} | "
          f"{lat['p50']:.2f} | {lat['p99']:.2f} | {lat['p999']:.2f} |")
    for chunk in DISK_CHUNKS:
        d = disk_direct[chunk]
        lat = d["chunk_latency_ms"]
        w(f"| disk, O_DIRECT (no page cache): write + fdatasync per {chunk // 1024} KiB | {d['mb_per_sec']:.0f} | "
          f"{d['cpu_s_per_gb']:.2f} | {lat['p50']:.2f} | {lat['p99']:.2f} | {lat['p999']:.2f} |")
    w(f"| loopback TCP, write 1 MiB → read: receiver | {tcp['mb_per_sec']:.0f} | {tcp['recv_cpu_s_per_gb']:.2f} | | | |")
    w(f"| loopback TCP, write 1 MiB → read: sender | {tcp['mb_per_sec']:.0f} | {tcp['send_cpu_s_per_gb']:.2f} | | | |")
    w(f"| loopback TCP, sendfile 1 MiB from the page cache: sender | {tcp_sendfile['mb_per_sec']:.0f} | "
      f"{tcp_sendfile['send_cpu_s_per_gb']:.2f} | | | |")
    wl = wakeup["late_ms"]
    w(f"| wake-up of a thread sleeping 1 ms at a time, idle machine: how late | | | {wl['p50']:.2f} | "
      f"{wl['p99']:.2f} | {wl['p999']:.2f} |")
    w("")
    w(f"CPU floor of a produced GB = disk (1 MiB fsyncs) + TCP receiver = {produce_floor:.2f} s/GB here, at the start; "
      "each uncompressed produce row below has its own floor, the same disk baseline run right after it "
      "with its bytes from the same starting state (plus the TCP receiver; at a fixed rate, paced as "
      "the run was, see there), because the cost of new "
      f"page-cache memory drifts on this VM. Of a consumed GB = the cheaper TCP sender = {consume_floor:.2f} s/GB (on loopback "
      "the sender also runs the receiving side's TCP processing). Latency percentiles of the disk rows "
      "are per chunk (write + fdatasync). The O_DIRECT rows show what the page cache costs here; "
      "they are the floor only of the direct I/O section (by default the broker writes through the "
      "page cache, as Kafka does).\n")
    w("## Produce\n")
    w("| record | acks | codec | records/s | MB/s | vs disk (1 MiB fsync) | vs TCP | p50 ms | p99 ms | p99.9 ms | broker CPU s/GB | CPU floor s/GB | vs floor |")
    w("|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for (size, acks, codec), r in results.items():
        lat = r["latency_ms"]
        floor = f"{r['floor_s_per_gb']:.2f} | {cpu_per_gb(r) / r['floor_s_per_gb']:.2f}" if codec == "none" else "– | –"
        w(f"| {size} B | {acks} | {codec} | {r['records_per_sec']:.0f} | {r['mb_per_sec']:.1f} | "
          f"{r['mb_per_sec'] / disk[mib]['mb_per_sec']:.2f} | {r['mb_per_sec'] / tcp['mb_per_sec']:.2f} | {lat['p50']:.1f} | "
          f"{lat['p99']:.1f} | {lat['p999']:.1f} | {cpu_per_gb(r):.2f} | {floor} |")
    w("\nMB/s and CPU per GB count the records' uncompressed bytes; with lz4 fewer bytes reach the "
      "socket and the disk, so those rows have no floor. Unthrottled runs queue in the client, so "
      "their latencies measure the queue; see the fixed-rate runs below for latency. Every acks "
      "setting is fsynced by default (consumers see only durable data, `flush.messages` / "
      "`flush.ms` relax it), so acks=1 and acks=all do the same work in the broker; their "
      "differences here are run-to-run variation. The 1 KiB acks=all uncompressed row is the "
      f"median by records/s of {MAX_REPEATS} runs (a fresh topic each), and its records/s is the "
      "maximum the fixed-rate runs below take shares of: "
      f"{every_cell(results[(1024, 'all', 'none')])}.\n")
    d256 = disk[262144]["chunk_latency_ms"]
    w(f"## Produce latency at a fixed rate (1 KiB, acks=all, linger.ms={LATENCY_LINGER_MS})\n")
    w(f"| share of max (records/s asked) | records/s sent | MB/s | p50 ms | p95 ms | p99 ms | p99.9 ms | {TAIL_HEADER}")
    w(f"|---:|---:|---:|---:|---:|---:|---:|{TAIL_ALIGN}")
    for share, r in paced.items():
        lat = r["latency_ms"]
        w(f"| {share:.0%} ({r['asked']}) | {r['records_per_sec']:.0f} | {r['mb_per_sec']:.1f} | {lat['p50']:.2f} | "
          f"{lat['p95']:.2f} | {lat['p99']:.2f} | {lat['p999']:.2f} | {tail_cells(r)}")
    w(f"\nEach share was run {LATENCY_REPEATS} times ({10 * scale:g} s each, a fresh topic each time); the row "
      "is the run with the median p99, and the last column gives every run's p99 and p99.9 in the "
      "order they ran: on this VM one stalled second decides a run's tail. Two columns give "
      "librdkafka's own view of the same run (`--print-metrics`, from its statistics windows of "
      "1 s, which keep percentiles per window only): the round trip of its produce requests to the "
      "broker (`rtt`: sent to answered, so the broker's work with its fsync, plus loopback) and the "
      "records' wait in the client before their request went out (`int_latency`, including the "
      "linger). A tail in the round trip is the broker's (or the machine's); one only in the queue "
      "is the client's. "
      f"Latency is from `send()` to the acknowledgement, so it includes up to {LATENCY_LINGER_MS} ms of "
      "client batching. The ideal writer is each run's floor, run right after it with its "
      "bytes from the same starting state (`millrace-bench baseline-disk --rate-mb`): requests "
      "of the run's average size (librdkafka's) arrive at the run's rate, and a single thread "
      "writes everything that has arrived with one `pwritev` and one `fdatasync`, as a broker "
      "with nothing to do but group commit would; its records' latency counts from their arrival "
      "spread over the interval before their request (the client's linger) to the sync. It is "
      "what the disk and the kernel allow at that rate and that moment, without the client or "
      "the network, and its CPU per GB (with the TCP receiver's) is the row's CPU floor. "
      f"(The disk's unpaced write + fdatasync of 256 KiB at the start: p99 {d256['p99']:.2f} ms, "
      f"p99.9 {d256['p999']:.2f} ms.) Small batches cost more CPU per GB "
      "(an fdatasync and a request round trip each): when client and broker together need more "
      "than the 2 cores, the client's queue grows and latency with it. Two measures of the machine "
      "itself at the same moment sit beside each fixed-rate run: how late a thread sleeping 1 ms "
      "at a time woke up (`millrace-bench baseline-wakeup`, as `cyclictest`), and the CPU time the "
      "VM's host took from its vCPUs (`steal` in `/proc/stat`), over the run and in its worst "
      "100 ms. A tail far above the wake-up lateness is queueing in the client or the broker, not "
      "the scheduler (`docs/performance.md`, \"What limits each figure\").\n")
    w(f"## With the page-cache window (`--log-page-cache-window-bytes {WINDOW}`)\n")
    w("Off by default. With it, the broker drops each segment's synced pages more than the window "
      "behind its end, so writing reuses the same page-cache memory; consumers further behind read "
      "from the disk (`docs/design/storage.md`, \"Page-cache window\"). The floor of these rows "
      "drops its pages the same way (`baseline-disk --drop-behind`). The first row is one run of "
      f"the same on the default broker ({unwindowed['gb']:.1f} GB).\n")
    mode_table(w, "window", unwindowed, windowed, wpaced)
    w(f"\nThe window's unthrottled row is the median by records/s of {MAX_REPEATS} runs: "
      f"{every_cell(windowed)}.\n")
    w("## With direct I/O (`--log-direct-io`)\n")
    w("Off by default. With it, active segments are written with `O_DIRECT` from an in-memory tail "
      "(appends are copied there), bypassing the page cache; consumers within the newest 8 MiB of a "
      "partition read from that memory, older data from the disk (`docs/design/storage.md`, "
      "\"Direct I/O\"). The floor of these rows writes with `O_DIRECT` too (`baseline-disk --direct`). "
      f"The first row is the default broker's single run above ({unwindowed['gb']:.1f} GB). The last "
      "rows are the direct broker's fixed-rate runs again, at the same rates, on a broker with "
      f"`--num-network-threads {CPUS}` (a network thread per CPU instead of the default one "
      "fewer), started after the "
      "direct broker's runs (so minutes later, and with a fresh data directory: compare them "
      "with the ideal writer of each run; `docs/performance.md` has alternating pairs).\n")
    mode_table(w, "direct", unwindowed, direct, dpaced,
               [(f"direct, {CPUS} network threads", d1paced)])
    w(f"\nThe direct broker's unthrottled row is the median by records/s of {MAX_REPEATS} runs: "
      f"{every_cell(direct)}.\n")
    w(f"Consuming that row's topic from the beginning ({dcons['gb']:.1f} GB, page cache dropped first, so "
      f"from the disk): {dcons['records_per_sec']:.0f} records/s, {dcons['mb_per_sec']:.1f} MB/s, broker CPU "
      f"{cpu_per_gb(dcons):.3f} s/GB ({cpu_per_gb(dcons) / consume_floor:.2f} × the consume floor, which "
      f"reads from the page cache). Broker resident memory after the produce runs: {direct_rss:.0f} MB, "
      f"of it {mb(direct_anon)} MB anonymous (the tails count against "
      "`--log-direct-io-memory-bytes`, 256 MiB by default).\n")
    w(f"## Consume ({cons['gb']:.1f} GB of 1 KiB records just produced, from the page cache; no group, all partitions assigned)\n")
    w(f"{cons['records_per_sec']:.0f} records/s, {cons['mb_per_sec']:.1f} MB/s "
      f"({cons['mb_per_sec'] / tcp['mb_per_sec']:.2f} of loopback TCP), first record after {cons['first_record_ms']:.0f} ms; "
      f"broker CPU {cpu_per_gb(cons):.3f} s/GB ({cpu_per_gb(cons) / consume_floor:.2f} × the floor). "
      f"The topic was read {MAX_REPEATS} times, one consumer after another; this is the read with "
      "the median CPU per GB, of "
      + ", ".join(f"{cpu_per_gb(x):.3f} s/GB at {x['mb_per_sec']:.0f} MB/s" for x in cons["every"])
      + ".\n")
    el = e2e["latency_ms"]
    w("## End-to-end latency (1 KiB at 1000 records/s, acks=all, from scheduled send time)\n")
    w(f"p50 {el['p50']:.2f} ms, p95 {el['p95']:.2f} ms, p99 {el['p99']:.2f} ms, p99.9 {el['p999']:.2f} ms, "
      f"max {el['max']:.2f} ms.\n")
    w("## Broker memory\n")
    w(f"Resident (VmRSS): {idle_rss:.0f} MB idle at start, {loaded_rss:.0f} MB after the produce "
      f"runs, {final_rss:.0f} MB at the end. Of it anonymous (RssAnon: heap, request buffers, "
      f"the allocator's cache): {mb(idle_anon)}, {mb(loaded_anon)} and {mb(final_anon)} MB; the "
      "rest is mapped files: the broker's code and libraries, the indexes, and segment pages "
      "that were read (page cache, reclaimable). The anonymous part is "
      "what configuration bounds (`docs/performance.md`, \"What limits each figure\").\n")
    with open(a.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
