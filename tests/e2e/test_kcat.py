"""kcat (librdkafka 2.0.2): a 100k-record keyed, headered round trip and the metadata listing."""

from __future__ import annotations

import shutil
import subprocess

import pytest

KCAT = shutil.which("kcat") or shutil.which("kafkacat")
pytestmark = pytest.mark.skipif(KCAT is None, reason="kcat is not installed")

N = 100_000
HEADERS = [("h1", "v1"), ("trace-id", "abc-123"), ("empty", "")]
# No idempotence (no InitProducerId on the broker); librdkafka's default pipelining is kept.
# The codec here is gzip; test_roundtrip.py covers every codec (lz4 included).
PRODUCER_X = ["-X", "enable.idempotence=false"]


def run(args, timeout=120, **kw):
    return subprocess.run([KCAT, *args], capture_output=True, timeout=timeout, **kw)


def test_kcat_produce_consume_100k(broker, topic_name, tmp_path):
    lines = []
    for i in range(N):
        # Keys and values of varying length and content: UTF-8, raw high bytes, and the
        # characters that matter to kcat (the key delimiter ':' may appear in values, since kcat
        # splits at the first one; '|' is the output separator but nothing parses the output).
        key = b"key-%06d" % i
        value = (b"value-%d-" % i + b"x" * (i % 97) + " \u00e9\u6f22|:~".encode()[: i % 12]
                 + bytes([0x80 + i % 128]) * (i % 3))
        lines.append(key + b":" + value)
    infile = tmp_path / "in.txt"
    infile.write_bytes(b"\n".join(lines) + b"\n")

    header_args = [a for k, v in HEADERS for a in ("-H", f"{k}={v}")]
    p = run(["-b", broker.bootstrap, "-P", "-t", topic_name, "-K:", *header_args,
             "-z", "gzip", *PRODUCER_X, "-l", str(infile)])
    assert p.returncode == 0, p.stderr.decode()

    c = run(["-b", broker.bootstrap, "-C", "-t", topic_name, "-p", "0", "-e", "-o", "beginning",
             "-f", "%k|%s|%h|%o\\n", "-q"])
    assert c.returncode == 0, c.stderr.decode()
    out = c.stdout.split(b"\n")
    assert out[-1] == b""
    out = out[:-1]
    assert len(out) == N

    hdr = ",".join(f"{k}={v}" for k, v in HEADERS).encode()
    expected = [line.replace(b":", b"|", 1) + b"|" + hdr + b"|%d" % i
                for i, line in enumerate(lines)]
    mismatches = [(i, e, o) for i, (e, o) in enumerate(zip(expected, out)) if e != o]
    assert not mismatches, f"{len(mismatches)} mismatches, first: {mismatches[:3]}"
    assert c.stdout == b"".join(e + b"\n" for e in expected)


def test_kcat_metadata_listing(broker, topic_name):
    p = run(["-b", broker.bootstrap, "-P", "-t", topic_name, *PRODUCER_X], input=b"hello\n")
    assert p.returncode == 0, p.stderr.decode()
    m = run(["-b", broker.bootstrap, "-L"], timeout=30)
    assert m.returncode == 0, m.stderr.decode()
    text = m.stdout.decode()
    assert "1 brokers:" in text
    assert f"broker 1 at {broker.bootstrap}" in text
    assert f'topic "{topic_name}" with 1 partitions:' in text
    assert "partition 0, leader 1, replicas: 1, isrs: 1" in text

    # JSON form, for one topic.
    import json
    j = run(["-b", broker.bootstrap, "-L", "-J", "-t", topic_name], timeout=30)
    assert j.returncode == 0, j.stderr.decode()
    meta = json.loads(j.stdout)
    assert [b["id"] for b in meta["brokers"]] == [1]
    assert meta["brokers"][0]["name"] == broker.bootstrap
    [t] = meta["topics"]
    assert t["topic"] == topic_name
    assert [(p["partition"], p["leader"]) for p in t["partitions"]] == [(0, 1)]
