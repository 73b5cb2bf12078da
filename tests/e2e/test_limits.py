"""Resource limits that bound the broker's memory by configuration rather than by traffic:
`max.connections` (connections beyond it wait unaccepted, as Kafka's acceptor does) and the
buffer a request's length word alone can reserve; and the size of the network thread pool."""

from __future__ import annotations

import os
import socket
import time

from confluent_kafka.admin import ConfigResource, ConfigSource, ResourceType

import kafka_raw as kr
from helpers import ck_admin, ck_consume, ck_producer, rss_kib


def test_max_connections_holds_new_connections_until_one_closes(broker_factory):
    broker = broker_factory(extra_args=["--max-connections", "2"])
    first, second = kr.connect(broker.port), kr.connect(broker.port)
    third = None
    try:
        kr.api_versions_roundtrip(first, 1)
        kr.api_versions_roundtrip(second, 2)
        # The third TCP connect completes in the kernel's backlog, but the broker does not take
        # it: its request stays unanswered.
        third = kr.connect(broker.port)
        third.sendall(kr.api_versions_request(3, 0))
        third.settimeout(1.5)
        try:
            got = third.recv(4)
        except socket.timeout:
            got = None
        assert got is None, "a connection over max.connections was served"
        # The two served connections are not disturbed.
        kr.api_versions_roundtrip(first, 4)
        # When one closes, the waiting connection is taken and its request answered.
        first.close()
        third.settimeout(10)
        frame = kr.recv_frame(third)
        assert frame is not None and kr.parse_api_versions_v0(frame)[:2] == (3, 0)
        kr.api_versions_roundtrip(second, 5)
    finally:
        for s in (first, second, third):
            if s is not None:
                s.close()
    assert "max.connections reached" in broker.log_text()


def test_max_connections_is_described(broker_factory):
    broker = broker_factory(extra_args=["--max-connections", "50"])
    admin = ck_admin(broker.bootstrap)
    res = ConfigResource(ResourceType.BROKER, "1")
    configs = admin.describe_configs([res])[res].result(timeout=10)
    assert configs["max.connections"].value == "50"
    assert configs["max.connections"].is_read_only
    # By default one network thread fewer than the CPUs (at least one), as many as it runs.
    threads = configs["num.network.threads"]
    assert threads.value == str(worker_threads(broker.pid))
    # (A CPU quota, which the affinity does not show, can only lower it.)
    assert 1 <= int(threads.value) <= max(len(os.sched_getaffinity(0)) - 1, 1)
    assert threads.source == ConfigSource.DEFAULT_CONFIG.value


def worker_threads(pid: int) -> int:
    """The broker's tokio worker threads: all of them start with the runtime, and no blocking
    task (named the same) runs before the first retention check or the shutdown."""
    tasks = f"/proc/{pid}/task"
    names = [open(f"{tasks}/{t}/comm").read().strip() for t in os.listdir(tasks)]
    return names.count("tokio-rt-worker")


def test_num_network_threads_sizes_the_pool(broker_factory, topic_name):
    """`--num-network-threads N` (N one more than the CPUs, so that ignoring it shows): the
    broker runs N tokio workers, says so through DescribeConfigs, and serves clients; then one
    thread serving three producers and a consumer at once."""
    n = len(os.sched_getaffinity(0)) + 1
    broker = broker_factory(extra_args=["--num-network-threads", str(n)])
    admin = ck_admin(broker.bootstrap)
    res = ConfigResource(ResourceType.BROKER, "1")
    configs = admin.describe_configs([res])[res].result(timeout=10)
    assert configs["num.network.threads"].value == str(n)
    assert configs["num.network.threads"].source == ConfigSource.STATIC_BROKER_CONFIG.value
    assert worker_threads(broker.pid) == n

    broker = broker_factory(extra_args=["--num-network-threads", "1"])
    producers = [ck_producer(broker.bootstrap) for _ in range(3)]
    for i, p in enumerate(producers):
        for j in range(100):
            p.produce(topic_name, value=f"{i}-{j}".encode())
    for p in producers:
        assert p.flush(10) == 0
    assert worker_threads(broker.pid) == 1
    got = ck_consume(broker.bootstrap, topic_name, 0, 0, 300, timeout=20)
    assert len({m.value() for m in got}) == 300


def test_frames_up_to_2mib_reserve_no_resident_memory(broker):
    """A frame of up to 2 MiB gets its whole buffer when its length arrives; 200 connections that
    claim 2 MiB and send a few bytes must not make those buffers resident (nothing is zeroed or
    touched ahead of the bytes)."""
    before = rss_kib(broker.pid)
    socks = []
    try:
        for i in range(200):
            s = kr.connect(broker.port)
            s.sendall(kr.i32(2 << 20) + kr.i16(18) + kr.i16(0) + kr.i32(i) + b"x" * 100)
            socks.append(s)
        time.sleep(1.0)
        grown_mib = (rss_kib(broker.pid) - before) / 1024
        assert grown_mib < 100, f"RSS grew by {grown_mib:.0f} MiB for 200 partial 2 MiB frames"
        s = kr.connect(broker.port)
        try:
            kr.api_versions_roundtrip(s, 7)
        finally:
            s.close()
    finally:
        for s in socks:
            s.close()


def test_direct_io_memory_is_bounded_by_the_directory_budget(broker_factory, topic_name):
    """With `--log-direct-io` each written partition keeps its newest bytes in memory, but all
    of them together stay within `--log-direct-io-memory-bytes`: writing 3.2 MB to each of 40
    partitions (128 MB in all; every partition's tail would hold its 3.2 MB with no budget)
    grows the broker by little more than the 16 MiB budget, and every record reads back
    byte-exact, the partitions that let go of their tail from the file."""
    from helpers import ck_create_topic, ck_produce_all

    broker = broker_factory(extra_args=["--log-direct-io",
                                        "--log-direct-io-memory-bytes", str(16 << 20)])
    parts, per_part = 40, 400
    ck_create_topic(broker.bootstrap, topic_name, partitions=parts)
    value = lambda p, i: f"{p:04d}{i:08d}".encode() * 667  # 8004 bytes
    before = rss_kib(broker.pid)
    p = ck_producer(broker.bootstrap, acks="all")
    items = [dict(value=value(part, i), partition=part)
             for i in range(per_part) for part in range(parts)]
    ck_produce_all(p, topic_name, items, timeout=120)
    grown_mib = (rss_kib(broker.pid) - before) / 1024
    # 16 MiB of tails, plus request buffers and the appends still being written.
    assert grown_mib < 64, f"RSS grew by {grown_mib:.0f} MiB for 128 MB written to 40 partitions"
    for part in (0, 17, parts - 1):
        got = ck_consume(broker.bootstrap, topic_name, part, 0, per_part, timeout=60)
        bad = [m.offset() for m in got if m.value() != value(part, m.offset())]
        assert not bad, (part, bad[:5])
