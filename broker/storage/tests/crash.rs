//! Crash test: a child process appends with durability waits and reports every offset once it
//! is durable, and now and then moves the log start (DeleteRecords: segments are deleted on the
//! background thread); the parent kill -9s it at random moments, many times in a row, reopens
//! the log each time and checks that every offset reported durable at or after the log start
//! reads back byte-exact, that the log start never goes back, and that only whole, valid
//! batches are served.
//!
//! Every other pair of children writes with direct I/O.
//!
//! The child is this test binary itself, started with `--ignored --exact crash_child`.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use millrace_storage::batch::validate;
use millrace_storage::{DirectIo, IoEngineChoice, Log, LogConfig};

const DIR_ENV: &str = "MILLRACE_CRASH_DIR";
const ENGINE_ENV: &str = "MILLRACE_CRASH_ENGINE";
/// Set to a tail cache size: the child writes with direct I/O.
const DIRECT_ENV: &str = "MILLRACE_CRASH_DIRECT";

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 256 * 1024,
        index_interval_bytes: 1024,
        max_message_bytes: 1 << 20,
        ..LogConfig::default()
    }
}

/// The child: appends forever, a few appends in flight at a time, and prints
/// `D base last seed records value_len ts` for each append once it is durable.
#[test]
#[ignore = "run by crash_kill9_loses_no_durable_record as its child process"]
fn crash_child() {
    let Ok(dir) = std::env::var(DIR_ENV) else { return };
    let engine = match std::env::var(ENGINE_ENV).as_deref() {
        Ok("portable") => IoEngineChoice::Portable,
        _ => IoEngineChoice::Auto,
    };
    let dir = Path::new(&dir);
    let io = io(dir, engine);
    io.set_direct_io(
        std::env::var(DIRECT_ENV).ok().and_then(|s| s.parse().ok()).map(DirectIo::with_cache),
    );
    let log = Log::open(dir.join("t-0"), config(), io).expect("child open");
    let mut rng = Rng(std::process::id() as u64 | 1);
    let mut in_flight = std::collections::VecDeque::new();
    let stdout = std::io::stdout();
    loop {
        let seed = rng.next();
        let records = 1 + rng.below(20) as usize;
        let value_max = if rng.below(10) == 0 { 40_000 } else { 600 };
        let value_len = rng.below(value_max) as usize;
        let ts = 1_000_000 + rng.below(1_000_000) as i64;
        if rng.below(60) == 0 {
            let (start, hw, _) = log.offsets();
            let to = start + rng.below((hw - start) as u64 / 2 + 1) as i64;
            let new_start = log.delete_records(to).expect("delete_records");
            use std::io::Write;
            let mut out = stdout.lock();
            writeln!(out, "S {new_start}").and_then(|_| out.flush()).expect("stdout");
        }
        let info = log.append(&batch(seed, records, value_len, ts)).expect("append");
        in_flight.push_back((info, seed, records, value_len, ts));
        if in_flight.len() > rng.below(8) as usize {
            while let Some((info, seed, records, value_len, ts)) = in_flight.pop_front() {
                info.durable.wait().expect("durable");
                use std::io::Write;
                let mut out = stdout.lock();
                writeln!(
                    out,
                    "D {} {} {seed} {records} {value_len} {ts}",
                    info.base_offset, info.last_offset
                )
                .and_then(|_| out.flush())
                .expect("stdout");
            }
        }
    }
}

#[derive(Debug, Clone)]
struct Durable {
    base: i64,
    last: i64,
    bytes: Vec<u8>,
}

/// A child's report: a durable batch, or a log start it reached.
enum Report {
    Durable(Durable),
    Start(i64),
}

fn parse(line: &str) -> Option<Report> {
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() == 2 && f[0] == "S" {
        return Some(Report::Start(f[1].parse().ok()?));
    }
    if f.len() != 7 || f[0] != "D" {
        return None;
    }
    let base: i64 = f[1].parse().ok()?;
    let last: i64 = f[2].parse().ok()?;
    let b = batch(f[3].parse().ok()?, f[4].parse().ok()?, f[5].parse().ok()?, f[6].parse().ok()?);
    Some(Report::Durable(Durable { base, last, bytes: stored(b, base) }))
}

#[test]
fn crash_kill9_loses_no_durable_record() {
    init_tracing();
    let iterations: usize =
        std::env::var("MILLRACE_CRASH_ITERATIONS").ok().and_then(|s| s.parse().ok()).unwrap_or(30);
    let seed =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
            as u64
            | 1;
    eprintln!("crash test seed {seed}");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut durable: Vec<Durable> = Vec::new();
    let mut reported_start = 0i64;
    let mut truncations = 0usize;
    for iteration in 0..iterations {
        let engine = if iteration % 2 == 0 { "io_uring" } else { "portable" };
        // Every other pair of runs writes with direct I/O, with a small tail cache.
        let direct = if iteration / 2 % 2 == 1 { "65536" } else { "" };
        let mut child = Command::new(&exe)
            .args(["--ignored", "--exact", "crash_child", "--nocapture", "--test-threads", "1"])
            .env(DIR_ENV, dir.path())
            .env(ENGINE_ENV, engine)
            .env(DIRECT_ENV, direct)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(d) = parse(&line) {
                    if tx.send(d).is_err() {
                        break;
                    }
                }
            }
        });
        // Let it run a random while once it has made progress, then kill -9.
        let first = rx.recv_timeout(Duration::from_secs(60)).expect("child made no progress");
        let mut reports = vec![first];
        let run_for = Duration::from_millis(5 + rng.below(300));
        let until = Instant::now() + run_for;
        while let Ok(d) = rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
            reports.push(d);
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        reader.join().unwrap();
        reports.extend(rx.try_iter());
        let mut got = Vec::new();
        for r in reports {
            match r {
                Report::Durable(d) => got.push(d),
                Report::Start(s) => reported_start = reported_start.max(s),
            }
        }
        // Appends are reported in offset order and continue from the previous run's log end.
        for w in got.windows(2) {
            assert_eq!(w[0].last + 1, w[1].base, "iteration {iteration}: gap in reports");
        }
        durable.extend(got);

        // Reopen in this process and check.
        let io = io(dir.path(), IoEngineChoice::Portable);
        let log = Log::open(dir.path().join("t-0"), config(), io.clone()).unwrap();
        truncations += log.open_report().truncations.len();
        let (start, hw, leo) = log.offsets();
        assert_eq!(hw, leo);
        assert!(
            start >= reported_start,
            "iteration {iteration}: log start {start} went back before {reported_start}"
        );
        let last_durable = durable.last().map_or(0, |d| d.last + 1);
        assert!(
            leo >= last_durable,
            "iteration {iteration}: log end {leo} below durable {last_durable}"
        );
        let all = read_all(&log);
        let mut expect_next = all.first().map_or(leo, |b| b.0);
        if let Some((base, last, _)) = all.first() {
            assert!(*base <= start && start <= *last, "iteration {iteration}: first batch");
        }
        for (base, last, bytes) in &all {
            assert_eq!(*base, expect_next, "iteration {iteration}: offsets not contiguous");
            validate(bytes, 1 << 20).expect("served batch is valid");
            expect_next = last + 1;
        }
        assert_eq!(expect_next, leo);
        let by_base: std::collections::HashMap<i64, &Vec<u8>> =
            all.iter().map(|(b, _, x)| (*b, x)).collect();
        for d in durable.iter().filter(|d| d.last >= start) {
            let got = by_base.get(&d.base).unwrap_or_else(|| {
                panic!("iteration {iteration}: durable batch at {} lost", d.base)
            });
            assert_eq!(
                **got, d.bytes,
                "iteration {iteration}: durable batch at {} differs",
                d.base
            );
        }
        // Every few rounds, close cleanly so the clean-start path is crossed too.
        if iteration % 5 == 4 {
            log.close().unwrap();
        }
        drop(log);
        drop(io);
        eprintln!(
            "iteration {iteration} ({engine}{}): {} durable batches, log end {leo}, ran {run_for:?}",
            if direct.is_empty() { "" } else { ", direct" },
            durable.len()
        );
    }
    eprintln!(
        "{iterations} kills, {} durable batches reported, {truncations} torn tails cut, log start \
         {reported_start} reported",
        durable.len()
    );
    assert!(reported_start > 0, "the child never moved the log start");
}
