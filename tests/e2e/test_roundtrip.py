"""Produce and consume with confluent-kafka and kafka-python, every compression codec: keys,
headers, null keys/values and explicit timestamps round-trip, offsets contiguous from 0."""

from __future__ import annotations

import pytest

import kafka_raw
from helpers import (ck_consume, ck_produce_all, ck_producer, dontneed_drops_pages, kp_consume,
                     kp_producer, resident_share)

CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]
CODEC_IDS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}
N = 300
BASE_TS = 1_700_000_000_000


def records(null_header_values: bool):
    """The records to send: (key, value, headers, timestamp). kafka-python refuses a record
    with neither key nor value and headers with null values; confluent-kafka takes both."""
    out = []
    for i in range(N):
        key = None if i % 3 == 0 else f"key-{i}".encode()
        if i % 5 == 0 and key is not None:
            value = None
        else:
            # Compressible and incompressible-looking parts, some binary.
            value = (f"value-{i}-".encode() * (1 + i % 7)) + bytes(range(i % 256))
        headers = [("h-index", str(i).encode()), ("h-bin", bytes([i % 256, 0, 255]))]
        if i % 4 == 0:
            headers.append(("h-empty", b""))
        if null_header_values and i % 6 == 0:
            headers.append(("h-null", None))
        if i % 10 == 0:
            headers.append(("h-index", b"dup"))  # repeated header names keep their order
        ts = BASE_TS + i * 37 - (500 if i % 11 == 0 else 0)  # not monotonic on purpose
        out.append((key, value, headers, ts))
    return out


class CodecNotUsed(AssertionError):
    pass


def assert_stored_codec(broker, topic, codec):
    """The log holds the batches as sent: they cover offsets 0..N contiguously, and (most of)
    the records are in batches of the codec the producer was asked for, so it was exercised."""
    batches = kafka_raw.fetch_batches(broker.port, topic)
    next_offset = 0
    for b in batches:
        assert b.base_offset == next_offset, batches
        next_offset += b.record_count
    assert next_offset == N
    # Producers may send a batch uncompressed when compression does not pay (librdkafka does
    # for tiny batches), but most records must have gone through the codec.
    want = CODEC_IDS[codec]
    assert {b.codec for b in batches} <= {0, want}, batches
    in_codec = sum(b.record_count for b in batches if b.codec == want)
    if in_codec < N // 2:
        raise CodecNotUsed(f"asked for {codec}, stored batches are {batches}")


# librdkafka enables its LZ4 feature only when the broker's ApiVersions lists FindCoordinator
# (its proxy for "Kafka >= 0.10"); without it, it silently sends lz4 batches uncompressed. The
# broker lists FindCoordinator for this reason, and the stored-codec check above guards it.


@pytest.mark.parametrize("codec", CODECS)
def test_confluent_roundtrip(broker, topic_name, codec):
    recs = records(null_header_values=True)
    p = ck_producer(broker.bootstrap, **{"compression.type": codec, "linger.ms": 20})
    offsets = ck_produce_all(p, topic_name, [
        dict(key=k, value=v, headers=h, timestamp=ts) for k, v, h, ts in recs])
    assert offsets == list(range(N))

    got = ck_consume(broker.bootstrap, topic_name, 0, 0, N)
    for i, (m, (k, v, h, ts)) in enumerate(zip(got, recs)):
        assert m.offset() == i
        assert m.key() == k, i
        assert m.value() == v, i
        assert (m.headers() or []) == h, i
        assert m.timestamp() == (1, ts), i  # (TIMESTAMP_CREATE_TIME, ts)
    assert_stored_codec(broker, topic_name, codec)


@pytest.mark.parametrize("codec", CODECS)
def test_kafka_python_roundtrip(broker, topic_name, codec):
    recs = records(null_header_values=False)
    p = kp_producer(broker.bootstrap, compression_type=None if codec == "none" else codec,
                    linger_ms=20)
    try:
        futures = [p.send(topic_name, key=k, value=v, headers=h, timestamp_ms=ts, partition=0)
                   for k, v, h, ts in recs]
        p.flush(timeout=30)
        metas = [f.get(timeout=30) for f in futures]
    finally:
        p.close(timeout=10)
    assert [m.offset for m in metas] == list(range(N))
    assert_stored_codec(broker, topic_name, codec)

    got = kp_consume(broker.bootstrap, topic_name, 0, 0, N)
    for i, (r, (k, v, h, ts)) in enumerate(zip(got, recs)):
        assert r.offset == i
        assert r.key == k, i
        assert r.value == v, i
        assert list(r.headers) == h, i
        assert (r.timestamp_type, r.timestamp) == (0, ts), i  # CreateTime


def test_records_larger_than_fetch_limits(broker, topic_name):
    """Records bigger than the consumer's fetch limits still come through (Kafka returns the
    first batch even when it exceeds max_bytes / partition_max_bytes); near-limit records too."""
    import os
    values = [os.urandom(900_000), b"small", os.urandom(300_000), os.urandom(990_000)]
    p = ck_producer(broker.bootstrap, **{"linger.ms": 0})
    offsets = ck_produce_all(p, topic_name, [dict(value=v, partition=0) for v in values])
    assert offsets == [0, 1, 2, 3]
    got = ck_consume(broker.bootstrap, topic_name, 0, 0, len(values),
                     **{"fetch.max.bytes": 100_000, "message.max.bytes": 100_000,
                        "max.partition.fetch.bytes": 50_000,
                        "receive.message.max.bytes": 2_000_000})
    assert [m.value() for m in got] == values
    got = kp_consume(broker.bootstrap, topic_name, 0, 0, len(values))
    assert [r.value for r in got] == values


def test_page_cache_window_keeps_every_record_readable(broker_factory, topic_name, tmp_path):
    """With `--log-page-cache-window-bytes` the broker drops older log pages from the page
    cache as it appends; a consumer from the beginning then reads them back from the disk,
    every record intact and in order. A negative value other than -1 is refused at start."""
    import subprocess

    from conftest import MILLRACE_BIN

    bad = subprocess.run([MILLRACE_BIN, "serve", "--log-page-cache-window-bytes", "-2",
                          "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "refused")],
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode != 0 and "page-cache-window" in bad.stderr, bad.stderr

    broker = broker_factory(extra_args=["--log-page-cache-window-bytes", "1048576"])
    n, size = 3000, 8000
    value = lambda i: (f"{i:08d}".encode() * (size // 8))
    p = ck_producer(broker.bootstrap, **{"linger.ms": 5})
    offsets = ck_produce_all(p, topic_name, [{"value": value(i)} for i in range(n)], timeout=60)
    assert offsets == list(range(n))
    segment = broker.data_dir / "logs" / f"{topic_name}-0" / f"{0:020}.log"
    if dontneed_drops_pages(broker.data_dir):  # not where the page cache is the storage
        assert resident_share(segment, 0.0, 0.5) < 0.05, "older pages were not dropped"
    got = ck_consume(broker.bootstrap, topic_name, 0, 0, n, timeout=60)
    assert [m.offset() for m in got] == list(range(n))
    bad_values = [m.offset() for m in got if m.value() != value(m.offset())]
    assert not bad_values, bad_values[:5]
