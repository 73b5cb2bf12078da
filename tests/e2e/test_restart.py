"""Restarts on the same data directory: after SIGTERM (graceful) and after SIGKILL (crash), every
record acknowledged with acks=all is still there, topic metadata and configs survive, and new
records continue at the next offset."""

from __future__ import annotations

import signal
import threading
import time

import pytest
from confluent_kafka import OFFSET_BEGINNING, TopicPartition
from confluent_kafka.admin import NewPartitions

from helpers import (ck_admin, ck_consume, ck_consumer, ck_create_topic, ck_describe,
                     ck_produce_all, ck_producer, dontneed_drops_pages, resident_share)

SIGNALS = [pytest.param(signal.SIGTERM, id="sigterm"), pytest.param(signal.SIGKILL, id="sigkill")]
N0 = 3000  # partition 0, uncompressed
N1 = 1000  # partition 1, gzip


def items(partition, n, tag):
    return [dict(key=b"k%d" % i, value=b"%s-%d-" % (tag, i) + b"v" * (i % 40),
                 headers=[("i", b"%d" % i)], partition=partition, timestamp=1_650_000_000_000 + i)
            for i in range(n)]


def check(m, partition, i, tag):
    assert m.offset() == i
    assert m.partition() == partition
    assert m.key() == b"k%d" % i
    assert m.value() == b"%s-%d-" % (tag, i) + b"v" * (i % 40)
    assert m.headers() == [("i", b"%d" % i)]
    assert m.timestamp() == (1, 1_650_000_000_000 + i)


@pytest.mark.parametrize("sig", SIGNALS)
def test_restart_keeps_acked_records(broker, topic_name, sig):
    ck_create_topic(broker.bootstrap, topic_name, partitions=2,
                    config={"retention.ms": "86400000"})
    p = ck_producer(broker.bootstrap, acks="all")
    assert ck_produce_all(p, topic_name, items(0, N0, b"p0")) == list(range(N0))
    pz = ck_producer(broker.bootstrap, acks="all", **{"compression.type": "gzip"})
    assert ck_produce_all(pz, topic_name, items(1, N1, b"p1")) == list(range(N1))
    a = ck_admin(broker.bootstrap)
    [f] = a.delete_records([TopicPartition(topic_name, 1, 100)]).values()
    assert f.result(timeout=15).low_watermark == 100
    # Metadata changes that must survive too: a third partition (with a record), a deleted
    # topic, the cluster id.
    [f] = a.create_partitions([NewPartitions(topic_name, 3)]).values()
    f.result(timeout=15)
    p2 = ck_producer(broker.bootstrap, acks="all")
    assert ck_produce_all(p2, topic_name, [dict(value=b"p2", partition=2)]) == [0]
    gone = topic_name + "-deleted"
    ck_create_topic(broker.bootstrap, gone)
    assert ck_produce_all(p2, gone, [dict(value=b"x", partition=0)]) == [0]
    [f] = a.delete_topics([gone], operation_timeout=10).values()
    f.result(timeout=15)
    cluster_id = a.describe_cluster().result(timeout=15).cluster_id
    del p, pz, p2, a

    rc = broker.restart(sig)
    if sig == signal.SIGTERM:
        assert rc == 0, f"exit status {rc} after SIGTERM"
        assert "logs synced and closed" in broker.log_text()
    else:
        assert rc == -signal.SIGKILL

    a = ck_admin(broker.bootstrap)
    md = a.list_topics(timeout=10)
    assert len(md.topics[topic_name].partitions) == 3
    assert gone not in md.topics
    assert not [d for d in (broker.data_dir / "logs").iterdir() if d.name.startswith(gone)]
    assert a.describe_cluster().result(timeout=15).cluster_id == cluster_id
    [m] = ck_consume(broker.bootstrap, topic_name, 2, 0, 1)
    assert m.value() == b"p2"
    assert ck_describe(a, topic_name)["retention.ms"].value == "86400000"
    c = ck_consumer(broker.bootstrap)
    try:
        assert c.get_watermark_offsets(TopicPartition(topic_name, 0), timeout=10) == (0, N0)
        assert c.get_watermark_offsets(TopicPartition(topic_name, 1), timeout=10) == (100, N1)
    finally:
        c.close()

    got = ck_consume(broker.bootstrap, topic_name, 0, 0, N0)
    for i, m in enumerate(got):
        check(m, 0, i, b"p0")
    got = ck_consume(broker.bootstrap, topic_name, 1, OFFSET_BEGINNING, N1 - 100)
    for i, m in zip(range(100, N1), got):
        check(m, 1, i, b"p1")

    # New records continue at the next offset, and survive another restart.
    p = ck_producer(broker.bootstrap, acks="all")
    assert ck_produce_all(p, topic_name, [dict(value=b"new0", partition=0)]) == [N0]
    assert ck_produce_all(p, topic_name, [dict(value=b"new1", partition=1)]) == [N1]
    del p
    broker.restart(sig)
    [m] = ck_consume(broker.bootstrap, topic_name, 0, N0, 1)
    assert m.value() == b"new0"
    [m] = ck_consume(broker.bootstrap, topic_name, 1, N1, 1)
    assert m.value() == b"new1"
    p = ck_producer(broker.bootstrap, acks="all")
    assert ck_produce_all(p, topic_name, [dict(value=b"newer", partition=0)]) == [N0 + 1]


@pytest.mark.parametrize("acks,sig", [
    pytest.param("all", signal.SIGKILL, id="acks_all-sigkill"),
    pytest.param("all", signal.SIGTERM, id="acks_all-sigterm"),
    pytest.param("1", signal.SIGTERM, id="acks_1-sigterm"),
    pytest.param("1", signal.SIGKILL, id="acks_1-sigkill"),
])
def test_stop_during_produce_keeps_every_acked_record(broker, topic_name, acks, sig):
    """Stop the broker while a producer is busy: whatever was acknowledged survives, at the
    offset it was acknowledged with. acks=all records are fsynced before the answer. acks=1
    records survive a graceful stop (logs synced) and, as in Kafka (written to the page cache
    before the answer), a process kill."""
    ck_create_topic(broker.bootstrap, topic_name)
    p = ck_producer(broker.bootstrap, acks=acks,
                    **{"linger.ms": 2, "message.timeout.ms": 1500, "retries": 0})
    acked: dict[int, bytes] = {}

    def on_delivery(err, msg):
        if err is None:
            acked[msg.offset()] = msg.value()

    def stop_broker():
        broker.stopped = True  # deliberate (for the fixture's teardown check)
        broker.proc.send_signal(sig)

    killer = threading.Timer(1.0, stop_broker)
    killer.start()
    i = 0
    deadline = time.monotonic() + 10
    while broker.proc.poll() is None and time.monotonic() < deadline:
        try:
            p.produce(topic_name, value=b"rec-%07d" % i, partition=0, on_delivery=on_delivery)
            i += 1
        except BufferError:
            pass
        p.poll(0 if i % 100 else 0.001)
    killer.join()
    p.flush(10)  # everything still pending fails (message.timeout.ms)
    del p
    assert broker.proc.wait(20) == (-signal.SIGKILL if sig == signal.SIGKILL else 0)
    print(f"{len(acked)} records acknowledged before the stop, {i} produced")
    assert len(acked) >= 20, f"only {len(acked)} records acknowledged before the stop"

    broker.start()
    c = ck_consumer(broker.bootstrap)
    try:
        low, high = c.get_watermark_offsets(TopicPartition(topic_name, 0), timeout=10)
    finally:
        c.close()
    assert low == 0
    assert high >= max(acked) + 1, f"high watermark {high}, last acked offset {max(acked)}"
    got = {m.offset(): m.value() for m in ck_consume(broker.bootstrap, topic_name, 0, 0, high)}
    lost = [o for o in acked if got.get(o) != acked[o]]
    assert not lost, f"{len(lost)} acknowledged records lost or changed, first {lost[:5]}"
    # Offsets are dense, and the log takes new records at the end.
    assert sorted(got) == list(range(high))
    p = ck_producer(broker.bootstrap, acks="all")
    assert ck_produce_all(p, topic_name, [dict(value=b"after", partition=0)]) == [high]


def test_acks_all_is_answered_under_kafkas_flush_defaults(broker, topic_name):
    """Kafka's own defaults for flush.messages and flush.ms (Long.MAX_VALUE: never fsync by
    count or by time) relax the policy for acks=0 and acks=1 alone: an acks=all producer is
    answered once its records are fsynced, at the next group commit, not left to time out. acks=1
    records are visible once written, and everything acknowledged survives kill -9."""
    never = str(2**63 - 1)
    ck_create_topic(broker.bootstrap, topic_name,
                    config={"flush.messages": never, "flush.ms": never})
    quick = {"request.timeout.ms": 5000, "message.timeout.ms": 20000, "retries": 0}
    p1 = ck_producer(broker.bootstrap, acks="1", **quick)
    assert ck_produce_all(p1, topic_name, [dict(value=b"one-%d" % i) for i in range(50)],
                          timeout=20) == list(range(50))
    c = ck_consumer(broker.bootstrap)
    try:
        assert c.get_watermark_offsets(TopicPartition(topic_name, 0), timeout=10) == (0, 50)
    finally:
        c.close()
    pa = ck_producer(broker.bootstrap, acks="all", **quick)
    for round_ in range(3):
        t = time.monotonic()
        base = 50 + 100 * round_
        got = ck_produce_all(pa, topic_name,
                             [dict(value=b"all-%d" % (base + i)) for i in range(100)], timeout=20)
        assert got == list(range(base, base + 100))
        # Before: each request waited for a flush the policy never starts, until it timed out.
        assert time.monotonic() - t < 2.5, f"acks=all took {time.monotonic() - t:.1f}s"
    del p1, pa

    assert broker.restart(signal.SIGKILL) == -signal.SIGKILL
    got = ck_consume(broker.bootstrap, topic_name, 0, 0, 350)
    assert [m.value() for m in got] == ([b"one-%d" % i for i in range(50)]
                                        + [b"all-%d" % i for i in range(50, 350)])


def test_direct_io_tails_let_go_keep_acked_records_across_kill9(broker_factory, topic_name):
    """With `--log-direct-io` and a directory budget far below what 24 partitions' tails would
    hold, tails keep letting go of what they wrote while appends go on (the next append of a
    partition starts again from its partial last block). Every record acked with acks=all is
    back byte-exact after kill -9, appends go on at the next offsets, and everything is there
    after a graceful restart too."""
    broker = broker_factory(extra_args=["--log-direct-io", "--log-direct-io-memory-bytes",
                                        str(2 << 20)])
    parts, per_part = 24, 120
    ck_create_topic(broker.bootstrap, topic_name, partitions=parts)
    value = lambda p, i: f"{p:03d}-{i:06d}|".encode() * (300 + i % 97)  # 3.3-4.3 kB

    def produce(start, end):
        p = ck_producer(broker.bootstrap, acks="all", **{"linger.ms": 2})
        got = ck_produce_all(p, topic_name, [dict(value=value(part, i), partition=part)
                                             for i in range(start, end) for part in range(parts)],
                             timeout=60)
        # Offsets per partition are dense and in order.
        assert got == [i for i in range(start, end) for _ in range(parts)]

    def check_all(count):
        for part in range(parts):
            got = ck_consume(broker.bootstrap, topic_name, part, 0, count, timeout=60)
            assert [m.offset() for m in got] == list(range(count)), part
            bad = [m.offset() for m in got if m.value() != value(part, m.offset())]
            assert not bad, (part, bad[:5])

    produce(0, per_part)
    assert broker.restart(signal.SIGKILL) == -signal.SIGKILL
    check_all(per_part)
    produce(per_part, per_part + 40)
    assert broker.restart(signal.SIGTERM) == 0
    check_all(per_part + 40)
    assert "recovery cut the log" not in broker.log_text()


def test_direct_io_keeps_acked_records_across_crash_and_restart(broker_factory, topic_name):
    """With `--log-direct-io` the broker writes segments around the page cache and serves recent
    data from memory (a small cache here, so most reads come from the file). Records acked with
    acks=all survive kill -9 and a graceful restart byte-exact; the zeros a direct write leaves
    after the log end are cut without a torn-write warning, and offsets continue."""
    broker = broker_factory(extra_args=["--log-direct-io", "--log-direct-io-cache-bytes", "262144",
                                        "--log-segment-bytes", "4194304"])
    value = lambda i: (f"{i:08d}".encode() * 1000)  # 8000 bytes
    n = 3000  # 24 MB: several segments
    p = ck_producer(broker.bootstrap, acks="all", **{"linger.ms": 5})
    assert ck_produce_all(p, topic_name, [{"value": value(i)} for i in range(n)],
                          timeout=60) == list(range(n))
    part = broker.data_dir / "logs" / f"{topic_name}-0"
    segments = sorted(part.glob("*.log"))
    assert len(segments) >= 5, segments
    # Where the file system refuses O_DIRECT the broker says so and writes through the page
    # cache (the rest of the test still holds); where pages cannot be dropped (tmpfs: the page
    # cache is the storage) every page is resident anyway.
    if "O_DIRECT" not in broker.log_text() and dontneed_drops_pages(broker.data_dir):
        assert resident_share(segments[-2], 0.0, 1.0) < 0.1, "written through the page cache"

    def check_all(count):
        got = ck_consume(broker.bootstrap, topic_name, 0, 0, count, timeout=60)
        assert [m.offset() for m in got] == list(range(count))
        bad = [m.offset() for m in got if m.value() != value(m.offset())]
        assert not bad, bad[:5]

    check_all(n)
    assert broker.restart(signal.SIGKILL) == -signal.SIGKILL
    check_all(n)
    assert "recovery cut the log" not in broker.log_text()
    more = ck_producer(broker.bootstrap, acks="all")
    assert ck_produce_all(more, topic_name, [{"value": value(i)} for i in range(n, n + 500)],
                          timeout=60) == list(range(n, n + 500))
    del p, more
    assert broker.restart(signal.SIGTERM) == 0
    assert "logs synced and closed" in broker.log_text()
    check_all(n + 500)
