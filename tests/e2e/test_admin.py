"""Topic administration with confluent-kafka's AdminClient and kafka-python's KafkaAdminClient:
create (partitions + configs), describe configs, incremental alter, create partitions, delete,
and the error cases."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import (AlterConfigOpType, ConfigEntry, ConfigResource, ConfigSource,
                                   NewPartitions, NewTopic, ResourceType)
import kafka.errors as KErrors
from kafka import KafkaAdminClient
from kafka.admin import ConfigResource as KpConfigResource
from kafka.admin import NewTopic as KpNewTopic

from helpers import (ck_admin, ck_consume, ck_consumer, ck_create_topic, ck_describe,
                     ck_produce_all, ck_producer, kp_consume, kp_producer)

TOPIC_CONFIG_KEYS = {
    "retention.ms", "retention.bytes", "segment.bytes", "segment.ms", "max.message.bytes",
    "message.timestamp.type", "flush.messages", "flush.ms", "cleanup.policy",
    "index.interval.bytes", "segment.index.bytes",
}
# Broker defaults for a broker started without flags (Kafka's defaults).
DEFAULTS = {
    "segment.bytes": "1073741824",
    "retention.ms": "604800000",
    "retention.bytes": "-1",
    "max.message.bytes": "1048588",
    "message.timestamp.type": "CreateTime",
    "cleanup.policy": "delete",
}


def ck_error(exc_info) -> KafkaError:
    err = exc_info.value.args[0]
    assert isinstance(err, KafkaError), err
    return err


def ck_partition_count(admin, topic):
    md = admin.list_topics(topic=topic, timeout=10)
    t = md.topics[topic]
    assert t.error is None, t.error
    return len(t.partitions)


def test_confluent_admin(broker, topic_name):
    a = ck_admin(broker.bootstrap)

    # Create with partitions and config overrides.
    fs = a.create_topics([NewTopic(topic_name, num_partitions=3, replication_factor=1,
                                   config={"retention.ms": "123456",
                                           "max.message.bytes": "200000"})],
                         operation_timeout=10)
    assert fs[topic_name].result(timeout=15) is None
    assert ck_partition_count(a, topic_name) == 3
    md = a.list_topics(timeout=10)
    assert [b.id for b in md.brokers.values()] == [1]
    assert all(p.leader == 1 and p.replicas == [1] and p.isrs == [1]
               for p in md.topics[topic_name].partitions.values())

    # Describe: overrides are dynamic topic configs, the rest are defaults.
    cfg = ck_describe(a, topic_name)
    assert TOPIC_CONFIG_KEYS <= set(cfg), set(cfg)
    for name, value in [("retention.ms", "123456"), ("max.message.bytes", "200000")]:
        assert cfg[name].value == value
        assert cfg[name].source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value
        assert not cfg[name].is_default
    for name, value in DEFAULTS.items():
        if name in ("retention.ms", "max.message.bytes"):
            continue
        assert cfg[name].value == value, name
        assert cfg[name].source == ConfigSource.DEFAULT_CONFIG.value, name
        assert cfg[name].is_default, name

    # Incremental alter: SET one, DELETE an override, APPEND to a list config.
    res = ConfigResource(ResourceType.TOPIC, topic_name, incremental_configs=[
        ConfigEntry("retention.ms", "999000", incremental_operation=AlterConfigOpType.SET),
        ConfigEntry("segment.ms", "60000", incremental_operation=AlterConfigOpType.SET),
        ConfigEntry("max.message.bytes", None, incremental_operation=AlterConfigOpType.DELETE),
        ConfigEntry("cleanup.policy", "compact", incremental_operation=AlterConfigOpType.APPEND),
    ])
    [f] = a.incremental_alter_configs([res]).values()
    assert f.result(timeout=15) is None
    cfg = ck_describe(a, topic_name)
    assert cfg["retention.ms"].value == "999000"
    assert cfg["retention.ms"].source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    assert cfg["segment.ms"].value == "60000"
    assert cfg["max.message.bytes"].value == DEFAULTS["max.message.bytes"]
    assert cfg["max.message.bytes"].source == ConfigSource.DEFAULT_CONFIG.value
    assert cfg["cleanup.policy"].value.split(",") == ["delete", "compact"]

    # Invalid value and unknown key are refused and change nothing.
    for entry in (ConfigEntry("retention.ms", "soon", incremental_operation=AlterConfigOpType.SET),
                  ConfigEntry("no.such.config", "1", incremental_operation=AlterConfigOpType.SET)):
        [f] = a.incremental_alter_configs(
            [ConfigResource(ResourceType.TOPIC, topic_name, incremental_configs=[entry])]).values()
        with pytest.raises(KafkaException) as ei:
            f.result(timeout=15)
        assert ck_error(ei).code() == KafkaError.INVALID_CONFIG
    assert ck_describe(a, topic_name)["retention.ms"].value == "999000"

    # Create partitions: 3 -> 5, and the new partition takes records.
    fs = a.create_partitions([NewPartitions(topic_name, 5)], operation_timeout=10)
    assert fs[topic_name].result(timeout=15) is None
    assert ck_partition_count(a, topic_name) == 5
    p = ck_producer(broker.bootstrap)
    assert ck_produce_all(p, topic_name, [dict(value=b"in-p4", partition=4)]) == [0]
    [m] = ck_consume(broker.bootstrap, topic_name, 4, 0, 1)
    assert m.value() == b"in-p4"
    # Shrinking is refused.
    fs = a.create_partitions([NewPartitions(topic_name, 2)], operation_timeout=10)
    with pytest.raises(KafkaException) as ei:
        fs[topic_name].result(timeout=15)
    assert ck_error(ei).code() == KafkaError.INVALID_PARTITIONS

    # Creating it again: TOPIC_ALREADY_EXISTS.
    fs = a.create_topics([NewTopic(topic_name, num_partitions=1, replication_factor=1)])
    with pytest.raises(KafkaException) as ei:
        fs[topic_name].result(timeout=15)
    assert ck_error(ei).code() == KafkaError.TOPIC_ALREADY_EXISTS

    # Describing an unknown topic: an error.
    with pytest.raises(KafkaException) as ei:
        ck_describe(a, topic_name + "-missing")
    assert ck_error(ei).code() == KafkaError.UNKNOWN_TOPIC_OR_PART

    # A bad config on create: INVALID_CONFIG, nothing created.
    bad = topic_name + "-bad"
    fs = a.create_topics([NewTopic(bad, num_partitions=1, replication_factor=1,
                                   config={"retention.ms": "not-a-number"})])
    with pytest.raises(KafkaException) as ei:
        fs[bad].result(timeout=15)
    assert ck_error(ei).code() == KafkaError.INVALID_CONFIG
    assert bad not in a.list_topics(timeout=10).topics

    # Delete: gone from metadata and configs; a new topic of the same name starts empty.
    fs = a.delete_topics([topic_name], operation_timeout=10)
    assert fs[topic_name].result(timeout=15) is None
    assert topic_name not in a.list_topics(timeout=10).topics
    with pytest.raises(KafkaException) as ei:
        ck_describe(a, topic_name)
    assert ck_error(ei).code() == KafkaError.UNKNOWN_TOPIC_OR_PART
    fs = a.delete_topics([topic_name], operation_timeout=10)
    with pytest.raises(KafkaException) as ei:
        fs[topic_name].result(timeout=15)
    assert ck_error(ei).code() == KafkaError.UNKNOWN_TOPIC_OR_PART

    fs = a.create_topics([NewTopic(topic_name, num_partitions=1, replication_factor=1)])
    assert fs[topic_name].result(timeout=15) is None
    assert ck_partition_count(a, topic_name) == 1
    assert ck_describe(a, topic_name)["retention.ms"].value == DEFAULTS["retention.ms"]
    # (A new producer: the old one has the deleted topic's 5 partitions cached.)
    p2 = ck_producer(broker.bootstrap)
    assert ck_produce_all(p2, topic_name, [dict(value=b"fresh", partition=0)]) == [0]
    [m] = ck_consume(broker.bootstrap, topic_name, 0, 0, 1)
    assert m.value() == b"fresh"

    # DescribeCluster.
    cl = a.describe_cluster(request_timeout=10).result(timeout=15)
    assert [n.id for n in cl.nodes] == [1]
    assert cl.controller.id == 1
    assert cl.cluster_id


def kp_describe(admin, topic, config_filter="all"):
    return admin.describe_configs([KpConfigResource("TOPIC", topic)],
                                  config_filter=config_filter)["topic"][topic]


def kp_raw_describe_error(admin, topic):
    """kafka-python 3.0's describe_configs drops per-resource error codes (an unknown topic
    comes back as an empty dict), so send the request through its connection manager."""
    req = admin._describe_configs_request([KpConfigResource("TOPIC", topic)])
    resp = admin._manager.run(admin._manager.send, req)
    [result] = resp.results
    return result.error_code


def test_validate_only_reports_the_partition_count(broker, topic_name):
    """CreateTopics with validate_only answers the count the topic would get: from explicit
    replica assignments, from num.partitions for -1, and creates nothing."""
    a = KafkaAdminClient(bootstrap_servers=broker.bootstrap, request_timeout_ms=15000)
    try:
        res = a.create_topics([KpNewTopic(topic_name, num_partitions=-1, replication_factor=-1,
                                          replica_assignments={0: [1], 1: [1], 2: [1]})],
                              validate_only=True)
        [t] = res["topics"]
        assert (t["error_code"], t["num_partitions"]) == (0, 3)
        res = a.create_topics({topic_name: {"num_partitions": -1, "replication_factor": -1}},
                              validate_only=True)
        [t] = res["topics"]
        assert (t["error_code"], t["num_partitions"]) == (0, 1)  # num.partitions default
        assert topic_name not in a.list_topics()
    finally:
        a.close()


def test_kafka_python_admin(broker, topic_name):
    a = KafkaAdminClient(bootstrap_servers=broker.bootstrap, request_timeout_ms=15000)
    try:
        res = a.create_topics({topic_name: {"num_partitions": 2, "replication_factor": 1,
                                            "configs": {"retention.ms": "7777"}}})
        [t] = res["topics"]
        assert (t["name"], t["error_code"], t["num_partitions"]) == (topic_name, 0, 2)
        assert t["configs"]["retention.ms"]["value"] == "7777"
        assert t["configs"]["retention.ms"]["config_source"] == "DYNAMIC_TOPIC_CONFIG"
        assert t["configs"]["segment.bytes"]["config_source"] == "DEFAULT_CONFIG"

        [desc] = a.describe_topics([topic_name])
        assert desc["error_code"] == 0
        assert [p["partition_index"] for p in desc["partitions"]] == [0, 1]
        assert {p["leader_id"] for p in desc["partitions"]} == {1}

        cfg = kp_describe(a, topic_name)
        assert TOPIC_CONFIG_KEYS <= set(cfg), set(cfg)
        assert cfg["retention.ms"]["value"] == "7777"
        assert cfg["retention.ms"]["config_source"] == "DYNAMIC_TOPIC_CONFIG"
        for name, value in DEFAULTS.items():
            if name == "retention.ms":
                continue
            assert cfg[name]["value"] == value, name
            assert cfg[name]["config_source"] == "DEFAULT_CONFIG", name
        assert cfg["retention.ms"]["config_type"] == "LONG"
        # The default filter ('modified') returns exactly the override.
        assert set(kp_describe(a, topic_name, "modified")) == {"retention.ms"}

        # alter_configs goes through IncrementalAlterConfigs on this broker.
        assert a._check_incremental_alter_configs_support()
        out = a.alter_configs([KpConfigResource("TOPIC", topic_name,
                                                {"retention.ms": "8888",
                                                 "message.timestamp.type": "LogAppendTime"})])
        assert out == {"topic": {topic_name: "OK"}}
        mod = kp_describe(a, topic_name, "modified")
        assert {k: v["value"] for k, v in mod.items()} == {
            "retention.ms": "8888", "message.timestamp.type": "LogAppendTime"}
        out = a.reset_configs([KpConfigResource("TOPIC", topic_name, ["retention.ms"])])
        assert out == {"topic": {topic_name: "OK"}}
        mod = kp_describe(a, topic_name, "modified")
        assert set(mod) == {"message.timestamp.type"}

        # LogAppendTime is applied to new records.
        before = int(time.time() * 1000)
        p = kp_producer(broker.bootstrap)
        md = p.send(topic_name, value=b"x", timestamp_ms=1_000, partition=1).get(timeout=15)
        p.close(timeout=10)
        [r] = kp_consume(broker.bootstrap, topic_name, 1, 0, 1)
        assert r.timestamp_type == 1 and r.timestamp >= before - 1000, r
        assert md.offset == 0

        res = a.create_partitions({topic_name: 4})
        assert [x.error_code for x in res.results] == [0]
        [desc] = a.describe_topics([topic_name])
        assert len(desc["partitions"]) == 4

        with pytest.raises(KErrors.TopicAlreadyExistsError):
            a.create_topics({topic_name: {"num_partitions": 1}})
        with pytest.raises(KErrors.InvalidPartitionsError):
            a.create_partitions({topic_name: 3})

        missing = topic_name + "-missing"
        assert kp_raw_describe_error(a, missing) == KErrors.UnknownTopicOrPartitionError.errno
        with pytest.raises(KErrors.UnknownTopicOrPartitionError):
            a.delete_topics([missing])

        res = a.delete_topics([topic_name])
        assert [t["error_code"] for t in res["topics"]] == [0]
        assert topic_name not in a.list_topics()
        assert kp_raw_describe_error(a, topic_name) == KErrors.UnknownTopicOrPartitionError.errno

        cl = a.describe_cluster()
        assert [(b["broker_id"], b["port"]) for b in cl["brokers"]] == [(1, broker.port)]
        assert cl["controller_id"] == 1
    finally:
        a.close()


def test_auto_create_with_num_partitions(broker_factory, topic_name):
    """Metadata auto-creates unknown topics with --num-partitions partitions; CreateTopics with
    -1 partitions gets the same; keyed records spread over them and read back per partition."""
    broker = broker_factory(extra_args=["--num-partitions", "3"])
    p = ck_producer(broker.bootstrap)
    n = 300
    ck_produce_all(p, topic_name, [dict(key=b"key-%d" % i, value=b"%d" % i) for i in range(n)])
    a = ck_admin(broker.bootstrap)
    assert ck_partition_count(a, topic_name) == 3
    fs = a.create_topics([NewTopic(topic_name + "-dflt")], operation_timeout=10)
    assert fs[topic_name + "-dflt"].result(timeout=15) is None
    assert ck_partition_count(a, topic_name + "-dflt") == 3

    c = ck_consumer(broker.bootstrap)
    try:
        counts = [c.get_watermark_offsets(TopicPartition(topic_name, i), timeout=10)[1]
                  for i in range(3)]
    finally:
        c.close()
    assert sum(counts) == n and all(counts), counts
    seen = {}
    for part, count in enumerate(counts):
        for m in ck_consume(broker.bootstrap, topic_name, part, 0, count):
            assert m.key() not in seen, "a key in two partitions"
            seen[m.key()] = int(m.value())
    assert seen == {b"key-%d" % i: i for i in range(n)}

    # With auto-creation off, Metadata for an unknown topic is UNKNOWN_TOPIC_OR_PART.
    off = broker_factory(extra_args=["--auto-create-topics-enable", "false"])
    md = ck_admin(off.bootstrap).list_topics(topic=topic_name, timeout=10)
    assert md.topics[topic_name].error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART


def test_concurrent_config_edits_of_one_topic_all_take_effect(broker, topic_name):
    """Clients edit different keys of one topic at the same time, round after round; each edit
    reads the current overrides and writes them back with its change, so none may overwrite
    another's (a lost update)."""
    ck_create_topic(broker.bootstrap, topic_name)
    keys = ["retention.ms", "segment.ms", "retention.bytes", "segment.bytes", "flush.ms",
            "max.message.bytes"]
    admins = [ck_admin(broker.bootstrap) for _ in keys]
    for rnd in range(1, 101):
        futures = []
        for a, key in zip(admins, keys):
            entry = ConfigEntry(key, str(1_048_576 + rnd), incremental_operation=AlterConfigOpType.SET)
            futures += list(a.incremental_alter_configs(
                [ConfigResource(ResourceType.TOPIC, topic_name, incremental_configs=[entry])]).values())
        for f in futures:
            assert f.result(timeout=15) is None
        cfg = ck_describe(admins[0], topic_name)
        assert {k: cfg[k].value for k in keys} == {k: str(1_048_576 + rnd) for k in keys}, \
            f"round {rnd}"
