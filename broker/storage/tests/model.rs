//! Property test: random sequences of append / read / roll / retention / delete_records /
//! flush / reopen (clean and unclean) agree with a simple in-memory model of the log.

mod common;

use common::*;
use millrace_storage::{DirectIo, IoEngineChoice, Log, LogConfig};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Append { records: usize, value_len: usize, ts: i64 },
    Read { at: u16, max_bytes: usize, min_one: bool },
    Roll,
    RetainBytes { keep: u16 },
    RetainMs { now: i64 },
    DeleteRecords { at: u16 },
    TimestampLookup { ts: i64 },
    MaxTimestamp,
    Flush,
    ReopenClean,
    ReopenUnclean,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (1usize..6, 0usize..400, 0i64..10_000)
            .prop_map(|(records, value_len, ts)| Op::Append { records, value_len, ts }),
        4 => (any::<u16>(), 1usize..6_000, any::<bool>())
            .prop_map(|(at, max_bytes, min_one)| Op::Read { at, max_bytes, min_one }),
        1 => Just(Op::Roll),
        1 => any::<u16>().prop_map(|keep| Op::RetainBytes { keep }),
        1 => (0i64..12_000).prop_map(|now| Op::RetainMs { now }),
        1 => any::<u16>().prop_map(|at| Op::DeleteRecords { at }),
        2 => (0i64..11_000).prop_map(|ts| Op::TimestampLookup { ts }),
        1 => Just(Op::MaxTimestamp),
        1 => Just(Op::Flush),
        1 => Just(Op::ReopenClean),
        1 => Just(Op::ReopenUnclean),
    ]
}

/// The model: every batch ever appended with its offsets, and the log start offset.
struct Model {
    batches: Vec<(i64, i64, Vec<u8>, i64)>, // base, last, stored bytes, max timestamp
    log_start: i64,
    next: i64,
}

impl Model {
    fn visible(&self) -> impl Iterator<Item = &(i64, i64, Vec<u8>, i64)> {
        self.batches.iter().filter(move |b| b.1 >= self.log_start)
    }
}

fn run(
    engine: IoEngineChoice,
    direct: Option<(u64, u64)>,
    segment_bytes: u64,
    index_interval_bytes: u64,
    ops: Vec<Op>,
) {
    let dir = tempfile::tempdir().unwrap();
    let io = io(dir.path(), engine);
    io.set_direct_io(
        direct.map(|(cache_bytes, memory_bytes)| DirectIo { cache_bytes, memory_bytes }),
    );
    let config = LogConfig {
        segment_bytes,
        index_interval_bytes,
        segment_index_bytes: 8 * 16, // small: exercises index-full rolls too
        retention_ms: -1,
        ..LogConfig::default()
    };
    let mut log = Some(open(dir.path(), config.clone(), &io));
    let mut m = Model { batches: Vec::new(), log_start: 0, next: 0 };
    for (step, op) in ops.into_iter().enumerate() {
        let l = log.as_ref().unwrap();
        match op {
            Op::Append { records, value_len, ts } => {
                let b = batch(step as u64, records, value_len, ts);
                let info = l.append(&b).unwrap();
                assert_eq!(info.base_offset, m.next);
                info.durable.wait().unwrap();
                let max_ts = ts + records as i64 - 1;
                m.batches.push((m.next, info.last_offset, stored(b, m.next), max_ts));
                m.next = info.last_offset + 1;
            }
            Op::Read { at, max_bytes, min_one } => {
                let span = (m.next - m.log_start + 2) as u64;
                let offset = m.log_start + (u64::from(at) % span) as i64;
                let r = l.read(offset, max_bytes, min_one);
                if offset > m.next {
                    assert!(r.is_err(), "step {step}: read past the end succeeded");
                    continue;
                }
                let r = r.unwrap();
                assert_eq!(
                    (r.log_start_offset, r.high_watermark, r.log_end_offset),
                    (m.log_start, m.next, m.next)
                );
                let got = split(&r.records);
                let expect: Vec<_> = m.visible().filter(|b| b.1 >= offset).collect();
                if expect.is_empty() {
                    assert!(got.is_empty(), "step {step}: data past the end");
                    continue;
                }
                if got.is_empty() {
                    assert!(
                        !min_one && expect[0].2.len() > max_bytes,
                        "step {step}: empty read at {offset}"
                    );
                    continue;
                }
                assert!(got.len() == 1 || r.records.len() <= max_bytes, "step {step}: over budget");
                for (g, e) in got.iter().zip(&expect) {
                    assert_eq!((g.0, g.1), (e.0, e.1), "step {step}: wrong batch");
                    assert_eq!(g.2, e.2, "step {step}: bytes differ");
                }
                assert!(got.len() <= expect.len());
            }
            Op::Roll => l.roll().unwrap(),
            Op::RetainBytes { keep } => {
                let mut c = config.clone();
                c.retention_bytes = i64::from(keep % 8_192);
                l.set_config(c).unwrap();
                l.enforce_retention(0).unwrap();
                l.set_config(config.clone()).unwrap();
                resync_start(l, &mut m, step);
            }
            Op::RetainMs { now } => {
                let mut c = config.clone();
                c.retention_ms = 1_000;
                l.set_config(c).unwrap();
                let before = m.log_start;
                l.enforce_retention(now).unwrap();
                l.set_config(config.clone()).unwrap();
                resync_start(l, &mut m, step);
                // Whatever was deleted was expired.
                for b in m.batches.iter().filter(|b| b.0 >= before && b.1 < m.log_start) {
                    assert!(now - b.3 > 1_000, "step {step}: unexpired batch {} deleted", b.0);
                }
            }
            Op::DeleteRecords { at } => {
                let span = (m.next - m.log_start + 1) as u64;
                let offset = m.log_start + (u64::from(at) % span) as i64;
                assert_eq!(l.delete_records(offset).unwrap(), offset);
                m.log_start = offset;
                assert_eq!(l.log_start_offset(), offset);
            }
            Op::TimestampLookup { ts } => {
                let got = l.offset_for_timestamp(ts).unwrap().and_then(|x| x.record);
                // First record (in offset order, at or after the log start) with timestamp >= ts.
                let mut want = None;
                'outer: for b in m.visible() {
                    let h = millrace_storage::batch::BatchHeader::parse(&b.2).unwrap();
                    for i in 0..=i64::from(h.last_offset_delta) {
                        let (off, t) = (b.0 + i, h.base_timestamp + i);
                        if off >= m.log_start && t >= ts {
                            want = Some((off, t));
                            break 'outer;
                        }
                    }
                }
                // Within the batch that holds the log start the answer may be clamped to it.
                assert_eq!(got, want, "step {step}: timestamp {ts}");
            }
            Op::MaxTimestamp => {
                let got = l.max_timestamp().unwrap().and_then(|x| x.record);
                // The first record (offset order, at or after the log start) with the largest
                // timestamp.
                let mut want: Option<(i64, i64)> = None;
                for b in m.visible() {
                    let h = millrace_storage::batch::BatchHeader::parse(&b.2).unwrap();
                    for i in 0..=i64::from(h.last_offset_delta) {
                        let (off, t) = (b.0 + i, h.base_timestamp + i);
                        if off >= m.log_start && want.is_none_or(|(_, wt)| t > wt) {
                            want = Some((off, t));
                        }
                    }
                }
                assert_eq!(got, want, "step {step}: max timestamp");
            }
            Op::Flush => l.flush().unwrap().wait().unwrap(),
            Op::ReopenClean | Op::ReopenUnclean => {
                let l = log.take().unwrap();
                if matches!(op, Op::ReopenClean) {
                    l.close().unwrap();
                }
                drop(l);
                let l = open(dir.path(), config.clone(), &io);
                assert_eq!(l.open_report().clean, matches!(op, Op::ReopenClean));
                assert!(
                    l.open_report().truncations.is_empty(),
                    "step {step}: {:?}",
                    l.open_report()
                );
                assert_eq!(
                    l.offsets(),
                    (m.log_start, m.next, m.next),
                    "step {step}: offsets after reopen"
                );
                log = Some(l);
            }
        }
    }
    let l = log.unwrap();
    let all = read_all(&l);
    let want: Vec<_> = m.visible().map(|b| (b.0, b.1, b.2.clone())).collect();
    assert_eq!(all, want);
}

/// Retention moved the start to a segment boundary; the model follows and checks it is a batch
/// boundary it knows.
fn resync_start(l: &Log, m: &mut Model, step: usize) {
    let start = l.log_start_offset();
    assert!(start >= m.log_start, "step {step}: log start went back");
    if start > m.log_start {
        assert!(
            start == m.next || m.batches.iter().any(|b| b.0 == start),
            "step {step}: start {start} inside a batch"
        );
        m.log_start = start;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, max_shrink_iters: 200, ..ProptestConfig::default() })]
    #[test]
    fn log_agrees_with_model(
        uring in any::<bool>(),
        // Direct I/O with tail caches of a few blocks (chunks of one or two blocks, so that
        // batches start new chunks and reads fall back to the file often) and a directory
        // budget that is often smaller (the rolled segment's tail and the older chunks let
        // go), or off.
        direct in proptest::option::of((0u64..40_000, 0u64..60_000)),
        segment_bytes in 300u64..6_000,
        index_interval_bytes in 1u64..2_000,
        ops in proptest::collection::vec(op(), 1..80),
    ) {
        let engine = if uring { *engines().first().unwrap() } else { IoEngineChoice::Portable };
        run(engine, direct, segment_bytes, index_interval_bytes, ops);
    }
}
