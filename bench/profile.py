#!/usr/bin/env python3
"""Where the broker's CPU time goes: runs a release `millrace` under `perf record -g` while
`millrace-bench` drives it, and sorts every sample of the broker process into one of a few
categories by its call stack (a flame graph, summed up). Needs `perf` (Debian: linux-perf).

    cargo build --release -p millrace-broker -p millrace-bench && python3 bench/profile.py

Scenarios: produce at a fixed rate with linger.ms=1 (the latency run's shape), produce 1 KiB
records unthrottled (acks=all), consume what that produced. Prints a markdown table per scenario, with the
broker's CPU seconds per GB from /proc/<pid>/stat beside it.
"""

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from report import BENCH, cpu_seconds, running_broker, settle  # noqa: E402

# (category, markers, user): a sample goes to the first category with a marker among the
# functions of its stack; the order puts the operation a sample serves before how it spends the
# time (a context switch inside an fdatasync counts as fdatasync). `user` categories take only
# samples whose innermost frame is in user space, matched against user-space frames, so that a
# page fault or an interrupt taken in the broker's code counts as kernel work.
CATEGORIES = [
    ("fdatasync (data writeback, inode write, cache flush, their waits)",
     ("ext4_sync_file", "io_fsync", "__x64_sys_fdatasync", "file_write_and_wait_range"), False),
    ("direct write (O_DIRECT: block mapping, bio submission and its wait)",
     ("ext4_dio_write_iter", "iomap_dio_rw", "__iomap_dio_rw"), False),
    ("write into the page cache (copy + ext4 block reservation)",
     ("ext4_buffered_write_iter", "generic_perform_write", "__x64_sys_pwritev", "do_pwritev"), False),
    ("TCP receive (copy out of the socket)", ("tcp_recvmsg", "__x64_sys_recvfrom", "sock_recvmsg"), False),
    ("TCP send (responses; fetch data by sendfile)",
     ("tcp_sendmsg", "do_writev", "__x64_sys_sendfile64", "do_splice_direct", "sock_write_iter"), False),
    ("waiting and waking (epoll, futex, eventfd, io_uring waits, context switches)",
     ("do_epoll_wait", "futex", "eventfd", "io_cqring_wait", "schedule", "finish_task_switch",
      "try_to_wake_up", "io_wq_enqueue", "io_wq_worker"), False),
    ("CRC-32C of record batches", ("crc32c", "crc_fast"), True),
    ("record validation (headers, varints)", ("millrace_storage::batch",), True),
    # With direct I/O a batch is copied into the tail by `Tail::append` (its streaming copy is
    # inlined there).
    ("user-space copies and allocation",
     ("memmove", "memcpy", "malloc", "free", "realloc", "direct::Tail::append", "copy_streaming"),
     True),
    ("the broker's other user-space code (decode/encode, tokio, libc)", ("",), True),
]
OTHER = "other kernel work (page faults, timers, interrupts)"


def classify(stack):
    """`stack`: (kernel, function) pairs, innermost first."""
    in_user = bool(stack) and not stack[0][0]
    for name, markers, user in CATEGORIES:
        if user and not in_user:
            continue
        for kernel, fn in stack:
            if user and kernel:
                continue
            if any(m in fn for m in markers):
                return name
    return OTHER


def samples(perf_data):
    out = subprocess.run(["perf", "script", "-i", perf_data, "-F", "comm,ip,sym"],
                         capture_output=True, text=True, check=True).stdout
    stack = []
    for line in out.splitlines():
        if not line.strip():
            if stack:
                yield stack
            stack = []
        elif line.startswith("\t") or line.startswith(" "):
            parts = line.split(None, 1)
            if len(parts) == 2:
                stack.append((parts[0].startswith("ffffffff"), parts[1]))
    if stack:
        yield stack


def bench(*args):
    subprocess.run([BENCH, *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=1_500_000)
    ap.add_argument("--rate", type=int, default=300_000, help="records/s of the fixed-rate run")
    ap.add_argument("--broker-arg", action="append", default=[],
                    help="an extra `millrace serve` argument (repeatable), e.g. --broker-arg=--log-direct-io")
    a = ap.parse_args()
    if shutil.which("perf") is None:
        sys.exit("perf not found (apt-get install linux-perf)")
    with running_broker("millrace-profile-", *a.broker_arg) as (data, bs, pid):
        profile(a, data, bs, pid)


def profile(a, data, bs, pid):
    common = ["--bootstrap-server", bs, "--record-size", "1024", "--acks", "all"]
    scenarios = [
        (f"produce 1 KiB, acks=all, {a.rate} records/s, linger.ms=1", a.records,
         ["produce", "--topic", "p2", "--num-records", str(a.records), "--throughput", str(a.rate),
          "--producer-props", "linger.ms=1", *common]),
        ("produce 1 KiB, acks=all, unthrottled", a.records,
         ["produce", "--topic", "p1", "--num-records", str(a.records), *common]),
        ("consume 1 KiB records (the unthrottled run's topic, from the page cache, or the disk "
         "with direct I/O)", a.records,
         ["consume", "--bootstrap-server", bs, "--topic", "p1", "--num-records", str(a.records)]),
    ]
    bench("produce", "--topic", "p1", "--num-records", "1000", *common)  # creates the topics
    bench("produce", "--topic", "p2", "--num-records", "1000", *common)
    for title, n, args in scenarios:
        settle(drop_caches=args[0] == "produce")
        perf_data = os.path.join(data, "perf.data")
        rec = subprocess.Popen(["perf", "record", "-F", "1999", "-g", "-p", str(pid), "-o", perf_data],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        c0 = cpu_seconds(pid)
        bench(*args)
        cpu = cpu_seconds(pid) - c0
        rec.send_signal(signal.SIGINT)
        rec.wait()
        counts = {}
        total = 0
        for st in samples(perf_data):
            c = classify(st)
            counts[c] = counts.get(c, 0) + 1
            total += 1
        gb = n * 1024 / 1e9
        print(f"### {title}\n")
        print(f"Broker CPU {cpu / gb:.2f} s/GB ({total} samples).\n")
        print("| where | share | s/GB |")
        print("|---|---:|---:|")
        for name in [c[0] for c in CATEGORIES] + [OTHER]:
            k = counts.get(name, 0)
            if k:
                print(f"| {name} | {100 * k / total:.0f}% | {cpu / gb * k / total:.2f} |")
        print()


if __name__ == "__main__":
    main()
