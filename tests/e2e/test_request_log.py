"""The request log (`RUST_LOG=millrace::request=debug`), as Kafka's `kafka.request.logger`: a
line per answered request with where its time went, and nothing of it by default."""

from __future__ import annotations

import re

from helpers import ck_consume, ck_produce_all, ck_producer

PHASES = ("local_ms", "queue_ms", "remote_ms", "send_ms")


def request_lines(log: str) -> list[dict[str, str]]:
    return [dict(re.findall(r"(\w+)=(\S+)", line))
            for line in log.splitlines() if "millrace::request" in line]


def test_request_log_times_every_request(broker_factory, topic_name):
    broker = broker_factory(env={"RUST_LOG": "info,millrace::request=debug"})
    p = ck_producer(broker.bootstrap, acks="all")
    ck_produce_all(p, topic_name, [{"value": b"x" * 1000} for _ in range(20)])
    got = ck_consume(broker.bootstrap, topic_name, 0, 0, 20)
    assert [m.value() for m in got] == [b"x" * 1000] * 20
    broker.stop()
    lines = request_lines(broker.log_text())
    apis = {line["api"] for line in lines}
    assert {"ApiVersions", "Metadata", "Produce", "Fetch"} <= apis, apis
    produce = [line for line in lines if line["api"] == "Produce"]
    assert produce, lines[:5]
    for line in lines:
        total = float(line["total_ms"])
        # From the request being in to its answer written: its phases, one after the other.
        parts = sum(float(line[k]) for k in PHASES)
        assert abs(parts - total) <= 0.005 * len(PHASES), line
        assert float(line["read_ms"]) >= 0 and int(line["bytes"]) > 0, line
        assert int(line["correlation_id"]) >= 0, line
    # A produce request carries its records: 20 values of 1000 bytes went out in them.
    assert sum(int(line["bytes"]) for line in produce) > 20 * 1000


def test_request_log_is_off_by_default(broker, topic_name):
    p = ck_producer(broker.bootstrap, acks="all")
    ck_produce_all(p, topic_name, [{"value": b"y"}])
    broker.stop()
    assert not request_lines(broker.log_text())
