//! A tour of the storage layer until the broker exists: opens a partition log in a data
//! directory, appends 1 KiB records in 16 KiB batches with durability waits, reads them back
//! through the zero-copy read path, looks one up by timestamp, and closes cleanly.
//!
//! `cargo run --release -p millrace-storage --example demo -- [data-dir] [batches]`

use std::time::Instant;

use millrace_storage::batch::BatchBuilder;
use millrace_storage::{now_ms, IoEngineChoice, LogConfig, LogDir};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let mut args = std::env::args().skip(1);
    let data_dir = args.next().unwrap_or_else(|| "millrace-data".into());
    let batches: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(2_000);

    let dir = LogDir::open(&data_dir, IoEngineChoice::from_env())?;
    let log = dir.open_log("demo", 0, LogConfig::default())?;
    let report = log.open_report();
    println!(
        "opened {} (engine {:?}; clean start: {}, segments recovered: {}, offsets [{}, {}))",
        log.dir().display(),
        dir.engine(),
        report.clean,
        report.segments_recovered,
        log.log_start_offset(),
        log.log_end_offset(),
    );

    let value = vec![b'x'; 1024];
    let start = Instant::now();
    let first = log.log_end_offset();
    let mut bytes = 0u64;
    let t0 = now_ms();
    let mut pending = Vec::new();
    for _ in 0..batches {
        let mut b = BatchBuilder::new();
        for _ in 0..16 {
            b.value(now_ms(), &value);
        }
        let batch = b.build();
        bytes += batch.len() as u64;
        pending.push(log.append(&batch)?.durable);
        if pending.len() == 8 {
            for d in pending.drain(..) {
                d.wait()?;
            }
        }
    }
    for d in pending {
        d.wait()?;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "appended {batches} batches ({:.1} MB) durably in {secs:.2}s: {:.1} MB/s, {:.0} records/s",
        bytes as f64 / 1e6,
        bytes as f64 / 1e6 / secs,
        (batches * 16) as f64 / secs
    );

    let start = Instant::now();
    let (mut offset, mut read) = (first, 0u64);
    while offset < log.high_watermark() {
        let r = log.read(offset, 1 << 20, true)?;
        read += r.records.len() as u64;
        let mut pos = 0;
        while pos < r.records.len() {
            let h = millrace_storage::batch::BatchHeader::parse(&r.records[pos..]).ok_or("bad")?;
            offset = h.last_offset() + 1;
            pos += h.total_len().ok_or("bad")?;
        }
    }
    println!(
        "read them back: {:.1} MB in {:.3}s",
        read as f64 / 1e6,
        start.elapsed().as_secs_f64()
    );
    if let Some(hit) = log.offset_for_timestamp(t0)? {
        println!("first record at or after {t0} ms: {:?}", hit.record);
    }
    println!("segments: {:?}", log.segment_base_offsets());
    log.close()?;
    println!("closed cleanly; run again to append more (offsets continue)");
    Ok(())
}
