//! Criterion benchmark of record-batch validation, the produce path's only per-record work:
//! `batch::validate` (header checks, CRC-32C of each batch, and for uncompressed batches a walk
//! of every record's varints and lengths) against the floor of the same bytes, their CRC-32C
//! alone (`baseline_crc32c`), which no broker can skip.
//!
//! Run with `cargo bench -p millrace-bench --bench validate`. Each group validates one request's
//! record set of about 1 MiB (as librdkafka sends at `batch.size=1MiB`), made of 64 KiB batches
//! of 100-byte or 1 KiB records with a key; throughput is in bytes.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use millrace_storage::batch::{self, BatchBuilder, Record};

/// About 1 MiB of 64 KiB batches of `record`-byte values.
fn record_set(record: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let per_batch = (64 * 1024 / (record + 20)).max(1);
    while out.len() < 1 << 20 {
        let mut b = BatchBuilder::new();
        for i in 0..per_batch {
            b.push(Record {
                timestamp: 1_700_000_000_000 + i as i64,
                key: Some(format!("key-{i}").into_bytes()),
                value: Some(vec![b'A' + (i % 26) as u8; record]),
                headers: Vec::new(),
            });
        }
        out.extend_from_slice(&b.build());
    }
    out
}

fn validate(c: &mut Criterion) {
    for (label, record) in [("100B", 100usize), ("1KiB", 1024)] {
        let set = record_set(record);
        // The batches are well formed: validation must accept them (checked once, untimed).
        assert!(batch::validate(&set, 1 << 20).is_ok());
        let mut group = c.benchmark_group(format!("validate_1MiB/{label}_records"));
        group.sample_size(20).warm_up_time(Duration::from_secs(1));
        group
            .measurement_time(Duration::from_secs(3))
            .throughput(Throughput::Bytes(set.len() as u64));
        group.bench_function("validate", |b| {
            b.iter(|| batch::validate(black_box(&set), 1 << 20).map(|v| v.len()))
        });
        group.bench_function("baseline_crc32c", |b| {
            b.iter(|| millrace_storage::batch::crc32c(black_box(&set)))
        });
        group.finish();
    }
}

criterion_group!(benches, validate);
criterion_main!(benches);
