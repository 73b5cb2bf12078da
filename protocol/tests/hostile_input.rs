//! No request bytes may abort or panic the broker's decoder. The broker binary installs
//! `GuardedAlloc`; so does this test, then feeds the decoder crafted element counts (the
//! `kafka-protocol` crate sizes `Vec::with_capacity` by them) and many random mutations of valid
//! requests, for every API and version we accept.

use bytes::{Bytes, BytesMut};
use millrace_protocol::alloc::GuardedAlloc;
use millrace_protocol::kafka_protocol::messages::*;
use millrace_protocol::kafka_protocol::protocol::{Encodable, StrBytes};
use millrace_protocol::{decode_body, parse_header, SUPPORTED_APIS};

#[global_allocator]
static ALLOC: GuardedAlloc = GuardedAlloc;

/// Decodes `body` as the request type of `key` at `version`; the result does not matter.
fn decode_any(key: ApiKey, version: i16, body: &Bytes) {
    let b = &mut body.clone();
    let _ = match key {
        ApiKey::Produce => decode_body::<ProduceRequest>(b, version).map(|_| ()),
        ApiKey::Fetch => decode_body::<FetchRequest>(b, version).map(|_| ()),
        ApiKey::ListOffsets => decode_body::<ListOffsetsRequest>(b, version).map(|_| ()),
        ApiKey::Metadata => decode_body::<MetadataRequest>(b, version).map(|_| ()),
        ApiKey::ApiVersions => decode_body::<ApiVersionsRequest>(b, version).map(|_| ()),
        ApiKey::CreateTopics => decode_body::<CreateTopicsRequest>(b, version).map(|_| ()),
        ApiKey::DeleteTopics => decode_body::<DeleteTopicsRequest>(b, version).map(|_| ()),
        ApiKey::DeleteRecords => decode_body::<DeleteRecordsRequest>(b, version).map(|_| ()),
        ApiKey::DescribeConfigs => decode_body::<DescribeConfigsRequest>(b, version).map(|_| ()),
        ApiKey::CreatePartitions => decode_body::<CreatePartitionsRequest>(b, version).map(|_| ()),
        ApiKey::IncrementalAlterConfigs => {
            decode_body::<IncrementalAlterConfigsRequest>(b, version).map(|_| ())
        }
        ApiKey::DescribeCluster => decode_body::<DescribeClusterRequest>(b, version).map(|_| ()),
        ApiKey::FindCoordinator => decode_body::<FindCoordinatorRequest>(b, version).map(|_| ()),
        other => panic!("no decoder for {other:?} in this test"),
    };
}

#[test]
fn huge_element_counts_do_not_abort() {
    // A ProduceRequest v3 body: transactional_id null, acks, timeout, then a topic count of
    // i32::MAX with nothing after it.
    let mut b = BytesMut::new();
    b.extend_from_slice(&(-1i16).to_be_bytes());
    b.extend_from_slice(&1i16.to_be_bytes());
    b.extend_from_slice(&1000i32.to_be_bytes());
    b.extend_from_slice(&i32::MAX.to_be_bytes());
    assert!(decode_body::<ProduceRequest>(&mut b.freeze(), 3).is_err());
    // Compact arrays (flexible versions): a varint count of u32::MAX.
    for &(key, min, max) in SUPPORTED_APIS {
        for version in min..=max {
            for prefix_len in 0..24 {
                let mut body = vec![0u8; prefix_len];
                body.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
                decode_any(key, version, &Bytes::from(body.clone()));
                let mut body = vec![0u8; prefix_len];
                body.extend_from_slice(&i32::MAX.to_be_bytes());
                decode_any(key, version, &Bytes::from(body));
            }
        }
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn sample(key: ApiKey, version: i16) -> Bytes {
    let name = TopicName(StrBytes::from_static_str("topic-a"));
    let mut b = BytesMut::new();
    let r = match key {
        ApiKey::Produce => {
            let mut p = produce_request::PartitionProduceData::default();
            p.records = Some(Bytes::from_static(&[0u8; 70]));
            let mut t = produce_request::TopicProduceData::default();
            t.name = name;
            t.partition_data = vec![p.clone(), p];
            let mut r = ProduceRequest::default();
            r.topic_data = vec![t];
            r.acks = -1;
            r.encode(&mut b, version)
        }
        ApiKey::Fetch => {
            let mut t = fetch_request::FetchTopic::default();
            if version < 13 {
                t.topic = name;
            }
            t.partitions = vec![fetch_request::FetchPartition::default(); 3];
            let mut r = FetchRequest::default();
            r.topics = vec![t];
            r.encode(&mut b, version)
        }
        ApiKey::Metadata => {
            let mut t = metadata_request::MetadataRequestTopic::default();
            t.name = Some(name);
            let mut r = MetadataRequest::default();
            r.topics = Some(vec![t.clone(), t]);
            r.encode(&mut b, version)
        }
        ApiKey::CreateTopics => {
            let mut t = create_topics_request::CreatableTopic::default();
            t.name = name;
            t.configs = vec![create_topics_request::CreatableTopicConfig::default(); 2];
            let mut r = CreateTopicsRequest::default();
            r.topics = vec![t];
            r.encode(&mut b, version)
        }
        _ => Ok(()),
    };
    r.expect("sample encodes");
    b.freeze()
}

#[test]
fn random_mutations_of_valid_requests_never_panic() {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    for &(key, min, max) in SUPPORTED_APIS {
        for version in min..=max {
            let base = sample(key, version);
            decode_any(key, version, &base);
            for _ in 0..300 {
                let mut m = base.to_vec();
                match rng.next() % 4 {
                    0 if !m.is_empty() => {
                        let i = (rng.next() % m.len() as u64) as usize;
                        m[i] = rng.next() as u8;
                    }
                    1 if !m.is_empty() => m.truncate((rng.next() % m.len() as u64) as usize),
                    2 => m.extend((0..rng.next() % 16).map(|_| rng.next() as u8)),
                    _ => {
                        let i = (rng.next() % (m.len() as u64 + 1)) as usize;
                        m.splice(i..i, [0xffu8, 0xff, 0xff, 0x7f]);
                    }
                }
                decode_any(key, version, &Bytes::from(m));
            }
            // Pure noise, and headers with noise behind them.
            for _ in 0..50 {
                let noise: Vec<u8> = (0..rng.next() % 64).map(|_| rng.next() as u8).collect();
                decode_any(key, version, &Bytes::from(noise.clone()));
                let _ = parse_header(&mut Bytes::from(noise));
            }
        }
    }
}
