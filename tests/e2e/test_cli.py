"""The `millrace topic|produce|consume` tools against the real broker."""

import subprocess

from conftest import MILLRACE_BIN as BIN


def run(broker, *args, stdin=None, check=True):
    r = subprocess.run([BIN, *args[:1], "--bootstrap-server", broker.bootstrap, *args[1:]],
                       input=stdin, capture_output=True, timeout=60)
    if check and r.returncode != 0:
        raise AssertionError(f"millrace {' '.join(args)} failed: {r.stderr.decode()}")
    return r


def topic(broker, *args, **kw):
    r = subprocess.run([BIN, "topic", "--bootstrap-server", broker.bootstrap, *args],
                       capture_output=True, timeout=60, **kw)
    return r


def test_topic_lifecycle_produce_and_consume(broker, topic_name):
    r = topic(broker, "create", topic_name, "--partitions", "2", "--config", "retention.ms=3600000")
    assert r.returncode == 0, r.stderr
    assert topic_name in topic(broker, "list").stdout.decode().split()
    again = topic(broker, "create", topic_name)
    assert again.returncode != 0 and b"TopicAlreadyExists" in again.stderr

    lines = b"".join(b"k%d:v%d\n" % (i, i) for i in range(2000)) + b"no-separator\n"
    run(broker, "produce", topic_name, "-K", ":", stdin=lines)
    out = run(broker, "consume", topic_name, "-e", "-f", "%o %k=%s\\n").stdout.decode().splitlines()
    assert len(out) == 2001
    assert out[0] == "0 k0=v0" and out[1999] == "1999 k1999=v1999" and out[2000] == "2000 =no-separator"
    tail = run(broker, "consume", topic_name, "-o", "-2", "-e", "-f", "%o\\n").stdout.split()
    assert tail == [b"1999", b"2000"]
    two = run(broker, "consume", topic_name, "-c", "2", "-f", "%s,").stdout
    assert two == b"v0,v1,"

    r = topic(broker, "alter-config", topic_name, "--set", "segment.bytes=1048576", "--delete", "retention.ms")
    assert r.returncode == 0, r.stderr
    desc = topic(broker, "describe", topic_name).stdout.decode()
    assert "partitions 2" in desc
    assert "segment.bytes=1048576  (topic override)" in desc
    assert "retention.ms=604800000  (default)" in desc
    assert "partition 0  leader 1  log start 0  end 2001" in desc
    bad = topic(broker, "alter-config", topic_name, "--set", "no.such.config=1")
    assert bad.returncode != 0 and b"error 40" in bad.stderr, bad.stderr

    assert topic(broker, "delete", topic_name).returncode == 0
    assert topic_name not in topic(broker, "list").stdout.decode().split()
    gone = run(broker, "consume", topic_name, "-e", check=False)
    assert gone.returncode != 0
