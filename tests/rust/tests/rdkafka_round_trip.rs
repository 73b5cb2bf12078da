//! Produce and consume through librdkafka (the `rdkafka` crate), every codec, with keys,
//! headers, null values and timestamps; restart in the middle.

use std::time::Duration;

use millrace_e2e::Broker;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

fn producer(b: &Broker, codec: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", b.bootstrap())
        .set("compression.type", codec)
        .set("enable.idempotence", "false")
        .set("acks", "all")
        .set("linger.ms", "5")
        .create()
        .expect("producer")
}

fn consume(b: &Broker, topic: &str, n: usize) -> Vec<rdkafka::message::OwnedMessage> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", b.bootstrap())
        .set("group.id", "unused")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning).unwrap();
    c.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while out.len() < n && std::time::Instant::now() < deadline {
        if let Some(m) = c.poll(Duration::from_millis(200)) {
            out.push(m.expect("message").detach());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rdkafka_round_trip_every_codec_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path());
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", broker.bootstrap()).create().unwrap();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let codecs = ["none", "gzip", "snappy", "lz4", "zstd"];
    let topics: Vec<String> = codecs.iter().map(|c| format!("rd-{c}")).collect();
    let new: Vec<NewTopic<'_>> =
        topics.iter().map(|t| NewTopic::new(t, 1, TopicReplication::Fixed(1))).collect();
    for r in admin.create_topics(&new, &opts).await.unwrap() {
        r.unwrap();
    }
    const N: usize = 500;
    for (codec, topic) in codecs.iter().zip(&topics) {
        let p = producer(&broker, codec);
        for i in 0..N {
            let key = format!("key-{i}");
            let value = format!("value-{i}-").repeat(i % 7 + 1);
            let headers =
                OwnedHeaders::new().insert(Header { key: "i", value: Some(&i.to_string()) });
            let mut rec = FutureRecord::to(topic)
                .key(&key)
                .headers(headers)
                .timestamp(1_700_000_000_000 + i as i64);
            if i % 10 != 3 {
                rec = rec.payload(&value);
            }
            let d = p.send(rec, Duration::from_secs(10)).await.expect("delivered");
            assert_eq!((d.partition, d.offset), (0, i as i64));
        }
    }
    // Restart cleanly in the middle: everything acknowledged is still there.
    broker.stop();
    let broker = Broker::start_on(dir.path(), broker.port);
    for (codec, topic) in codecs.iter().zip(&topics) {
        let got = consume(&broker, topic, N);
        assert_eq!(got.len(), N, "{codec}");
        for (i, m) in got.iter().enumerate() {
            assert_eq!(m.offset(), i as i64, "{codec}");
            assert_eq!(m.key(), Some(format!("key-{i}").as_bytes()), "{codec}");
            let want = (i % 10 != 3).then(|| format!("value-{i}-").repeat(i % 7 + 1));
            assert_eq!(m.payload(), want.as_deref().map(str::as_bytes), "{codec}");
            assert_eq!(m.timestamp().to_millis(), Some(1_700_000_000_000 + i as i64), "{codec}");
            let h = m.headers().expect("headers").get(0);
            assert_eq!((h.key, h.value), ("i", Some(i.to_string().as_bytes())), "{codec}");
        }
    }
}
