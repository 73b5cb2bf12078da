//! `millrace-bench`: Kafka-style perf tools on librdkafka (the `rdkafka` crate), usable against
//! any Kafka-compatible broker.
//!
//! - `produce`: the options and output shape of Kafka's `kafka-producer-perf-test`.
//! - `consume`: like `kafka-consumer-perf-test` (manual assignment of every partition; Millrace
//!   has no consumer groups yet).
//! - `e2e-latency`: produce at a fixed rate, consume, and report produce-to-consume latency
//!   percentiles from an HDR histogram, measured from each record's *scheduled* send time, so
//!   that a stall delays every record behind it (coordinated omission corrected).
//!
//! Every command takes `--json` for one machine-readable line at the end.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand};
use hdrhistogram::Histogram;
use millrace_bench::{create_file, AlignedBuf, DIRECT_BLOCK};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{
    BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer,
};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

#[derive(Debug, Parser)]
#[command(name = "millrace-bench", version, about = "Kafka-style perf tools (librdkafka)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Producer throughput and latency (kafka-producer-perf-test).
    Produce(ProduceArgs),
    /// Consumer throughput (kafka-consumer-perf-test).
    Consume(ConsumeArgs),
    /// Produce-to-consume latency at a fixed rate.
    E2eLatency(E2eArgs),
    /// Baseline: sequential write of `--bytes` in `--chunk` pieces to a file in `--dir`, with an
    /// fdatasync after every chunk (`--fsync-every-chunk`) or once at the end.
    BaselineDisk(BaselineDiskArgs),
    /// Baseline: copy `--bytes` over a loopback TCP connection in `--chunk` writes (or with
    /// `sendfile` from a file in `--sendfile-dir`, as a broker serves a fetch); reports the CPU
    /// time of the receiving and of the sending thread per GB.
    BaselineTcp(BaselineTcpArgs),
    /// Baseline: how late a thread that sleeps `--interval-us` at a time wakes up, for
    /// `--seconds` (as `cyclictest` measures): what the machine's scheduler, timers and host
    /// add to any wait, and so to any latency measured at the same moment.
    BaselineWakeup(BaselineWakeupArgs),
}

#[derive(Debug, Args)]
struct BaselineWakeupArgs {
    #[arg(long)]
    seconds: f64,
    #[arg(long, default_value_t = 1000)]
    interval_us: u64,
}

#[derive(Debug, Args)]
struct BaselineDiskArgs {
    #[arg(long)]
    dir: std::path::PathBuf,
    #[arg(long)]
    bytes: u64,
    #[arg(long, default_value_t = 65536)]
    chunk: usize,
    #[arg(long)]
    fsync_every_chunk: bool,
    /// Write with O_DIRECT (no page cache; `--chunk` must be a multiple of 4096)
    #[arg(long)]
    direct: bool,
    /// Drop the file's pages from the page cache once they are this many bytes behind the
    /// end, in steps of 4 MiB, after each sync (what the broker's
    /// `--log-page-cache-window-bytes` does); needs --fsync-every-chunk
    #[arg(long)]
    drop_behind: Option<u64>,
}

#[derive(Debug, Args)]
struct BaselineTcpArgs {
    #[arg(long)]
    bytes: u64,
    #[arg(long, default_value_t = 65536)]
    chunk: usize,
    /// Send with `sendfile` from a 64 MiB file created (and read into the page cache) in this
    /// directory, instead of `write` from a buffer.
    #[arg(long)]
    sendfile_dir: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Args)]
struct Common {
    #[arg(long, default_value = "127.0.0.1:9092")]
    bootstrap_server: String,
    #[arg(long)]
    topic: String,
    /// Print one JSON object at the end instead of the human lines.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct ProduceArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long)]
    num_records: u64,
    #[arg(long, required_unless_present = "payload_file")]
    record_size: Option<usize>,
    /// Payloads, one per line, chosen round-robin.
    #[arg(long)]
    payload_file: Option<std::path::PathBuf>,
    /// Records per second; -1 for no limit.
    #[arg(long, allow_hyphen_values = true, default_value_t = -1)]
    throughput: i64,
    /// librdkafka producer properties `k=v` (repeatable).
    #[arg(long, num_args = 1..)]
    producer_props: Vec<String>,
    #[arg(long, allow_hyphen_values = true, default_value = "all")]
    acks: String,
    #[arg(long, default_value = "none")]
    compression: String,
}

#[derive(Debug, Args)]
struct ConsumeArgs {
    #[command(flatten)]
    common: Common,
    /// Stop after this many records.
    #[arg(long)]
    messages: u64,
    /// Consume through a group (needs a broker with consumer groups); default: assign every
    /// partition from the beginning.
    #[arg(long)]
    group: Option<String>,
    /// Give up after this long without a record.
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
    #[arg(long, num_args = 1..)]
    consumer_props: Vec<String>,
}

#[derive(Debug, Args)]
struct E2eArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long, default_value_t = 1_000)]
    rate: u64,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    #[arg(long, default_value_t = 1024)]
    record_size: usize,
    #[arg(long, allow_hyphen_values = true, default_value = "all")]
    acks: String,
}

type Error = Box<dyn std::error::Error + Send + Sync>;

fn main() {
    let cli = Cli::parse();
    let r = match cli.command {
        Command::Produce(a) => produce(a),
        Command::Consume(a) => consume(a),
        Command::E2eLatency(a) => e2e(a),
        Command::BaselineDisk(a) => baseline_disk(a),
        Command::BaselineTcp(a) => baseline_tcp(a),
        Command::BaselineWakeup(a) => baseline_wakeup(a),
    };
    if let Err(e) = r {
        eprintln!("millrace-bench: {e}");
        std::process::exit(1);
    }
}

fn props(cfg: &mut ClientConfig, kvs: &[String]) -> Result<(), Error> {
    for kv in kvs {
        let (k, v) = kv.split_once('=').ok_or_else(|| format!("expected k=v, got {kv:?}"))?;
        cfg.set(k, v);
    }
    Ok(())
}

fn histogram() -> Histogram<u64> {
    // Microseconds, 1 µs .. 1 h, 3 significant digits.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// Latency bookkeeping shared with the delivery callback.
#[derive(Debug)]
struct Stats {
    hist: Mutex<Histogram<u64>>,
    window: Mutex<Histogram<u64>>,
    acked: AtomicU64,
    acked_bytes: AtomicU64,
    errors: AtomicU64,
}

impl Stats {
    fn new() -> Arc<Stats> {
        Arc::new(Stats {
            hist: Mutex::new(histogram()),
            window: Mutex::new(histogram()),
            acked: AtomicU64::new(0),
            acked_bytes: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        })
    }
}

struct Ctx(Arc<Stats>);

impl ClientContext for Ctx {}

impl ProducerContext for Ctx {
    type DeliveryOpaque = Box<(Instant, usize)>;
    fn delivery(&self, result: &DeliveryResult<'_>, opaque: Self::DeliveryOpaque) {
        let (sent, len) = *opaque;
        match result {
            Ok(_) => {
                let us = sent.elapsed().as_micros().max(1) as u64;
                let _ = self.0.hist.lock().map(|mut h| h.saturating_record(us));
                let _ = self.0.window.lock().map(|mut h| h.saturating_record(us));
                self.0.acked.fetch_add(1, Ordering::Relaxed);
                self.0.acked_bytes.fetch_add(len as u64, Ordering::Relaxed);
            }
            Err((e, _)) => {
                if self.0.errors.fetch_add(1, Ordering::Relaxed) < 5 {
                    eprintln!("delivery failed: {e}");
                }
            }
        }
    }
}

/// A record as the tools send it: no key, the send time and length as its delivery opaque.
type Record<'a> = BaseRecord<'a, [u8], [u8], Box<(Instant, usize)>>;

/// Sends one record with `try_send` (a `BaseProducer`'s or a `ThreadedProducer`'s `send`),
/// calling `wait` while the client's queue is full; any other error is returned (a record that
/// can never be sent must not be retried forever).
fn send<'a>(
    try_send: impl Fn(Record<'a>) -> Result<(), Box<(KafkaError, Record<'a>)>>,
    wait: impl Fn(),
    topic: &'a str,
    payload: &'a [u8],
) -> Result<(), KafkaError> {
    let mut opaque = Box::new((Instant::now(), payload.len()));
    loop {
        let rec = BaseRecord::with_opaque_to(topic, opaque).payload(payload).key(&[] as &[u8]);
        match try_send(rec).map_err(|e| *e) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), rec)) => {
                opaque = rec.delivery_opaque;
                wait();
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// The sending loop of `produce`: every record, at `--throughput` records/s when given, with a
/// progress line every 5 s (delivery reports are polled elsewhere).
fn send_all(
    a: &ProduceArgs,
    payloads: &[Vec<u8>],
    producer: &ThreadedProducer<Ctx>,
    stats: &Stats,
    start: Instant,
) -> Result<(), Error> {
    let mut last_report = start;
    let (mut window_records, mut window_bytes) = (0u64, 0u64);
    for i in 0..a.num_records {
        if a.throughput > 0 {
            let due = start + Duration::from_secs_f64(i as f64 / a.throughput as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        let payload = &payloads[(i % payloads.len() as u64) as usize];
        let wait = || producer.poll(Duration::from_millis(5));
        send(|r| producer.send(r).map_err(Box::new), wait, &a.common.topic, payload)?;
        window_records += 1;
        window_bytes += payload.len() as u64;
        if last_report.elapsed() >= Duration::from_secs(5) && !a.common.json {
            let secs = last_report.elapsed().as_secs_f64();
            let mut w = stats.window.lock().map_err(|_| "poisoned")?;
            println!(
                "{window_records} records sent, {:.1} records/sec ({:.2} MB/sec), {:.1} ms avg latency, {:.1} ms max latency.",
                window_records as f64 / secs,
                window_bytes as f64 / secs / 1e6,
                w.mean() / 1000.0,
                ms(w.max())
            );
            w.reset();
            (window_records, window_bytes) = (0, 0);
            last_report = Instant::now();
        }
    }
    Ok(())
}

fn produce(a: ProduceArgs) -> Result<(), Error> {
    let payloads: Vec<Vec<u8>> = match (&a.payload_file, a.record_size) {
        (Some(p), _) => {
            std::fs::read_to_string(p)?.lines().map(|l| l.as_bytes().to_vec()).collect()
        }
        // As kafka-producer-perf-test: one payload of random uppercase letters, sent as every
        // record's value (fixed seed, so runs compare).
        (None, Some(n)) => {
            let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
            vec![(0..n)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    b'A' + (x % 26) as u8
                })
                .collect()]
        }
        (None, None) => return Err("--record-size or --payload-file is required".into()),
    };
    if payloads.is_empty() {
        return Err("no payloads".into());
    }
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", &a.common.bootstrap_server)
        .set("acks", &a.acks)
        .set("compression.type", &a.compression)
        .set("enable.idempotence", "false")
        .set("linger.ms", "5")
        .set("batch.size", "1048576")
        .set("queue.buffering.max.kbytes", "1048576")
        .set("queue.buffering.max.messages", "1000000");
    props(&mut cfg, &a.producer_props)?;
    let stats = Stats::new();
    // Delivery reports are served by the producer's own polling thread, as the Java producer's
    // callbacks run on its I/O thread: a report's latency is then not also the time until the
    // sending loop next gets round to polling.
    let producer: ThreadedProducer<Ctx> = cfg.create_with_context(Ctx(stats.clone()))?;
    // The clock starts once the client knows the topic (the metadata request creates it where
    // the broker auto-creates topics). Kafka's tool gets there the same way: its first send()
    // blocks until the topic's metadata is in, and the records after it are sent only then.
    // librdkafka's send() does not block, so without this the records of the first tens of
    // milliseconds would queue behind the topic's creation, and at 100k records/s they are the
    // slowest 0.3%: the p99.9 of a 10 s run would measure the start, not the steady state.
    let md = producer.client().fetch_metadata(Some(&a.common.topic), Duration::from_secs(10))?;
    if let Some(e) = md.topics().iter().find_map(|t| t.error()) {
        // Unknown topic with auto-creation off, and the like: say so rather than time out.
        return Err(format!("topic {}: {:?}", a.common.topic, RDKafkaErrorCode::from(e)).into());
    }
    let start = Instant::now();
    send_all(&a, &payloads, &producer, &stats, start)?;
    producer.flush(Duration::from_secs(120))?;
    let secs = start.elapsed().as_secs_f64();
    let h = stats.hist.lock().map_err(|_| "poisoned")?;
    let n = stats.acked.load(Ordering::Relaxed);
    let bytes = stats.acked_bytes.load(Ordering::Relaxed);
    let errors = stats.errors.load(Ordering::Relaxed);
    let (p50, p95, p99, p999) = (
        ms(h.value_at_quantile(0.5)),
        ms(h.value_at_quantile(0.95)),
        ms(h.value_at_quantile(0.99)),
        ms(h.value_at_quantile(0.999)),
    );
    if a.common.json {
        println!(
            "{{\"records\":{n},\"errors\":{errors},\"seconds\":{secs:.3},\"records_per_sec\":{:.1},\"mb_per_sec\":{:.3},\"latency_ms\":{{\"avg\":{:.3},\"max\":{:.3},\"p50\":{p50:.3},\"p95\":{p95:.3},\"p99\":{p99:.3},\"p999\":{p999:.3}}}}}",
            n as f64 / secs,
            bytes as f64 / secs / 1e6,
            h.mean() / 1000.0,
            ms(h.max())
        );
    } else {
        println!(
            "{n} records sent, {:.1} records/sec ({:.2} MB/sec), {:.2} ms avg latency, {:.2} ms max latency, {p50:.2} ms 50th, {p95:.2} ms 95th, {p99:.2} ms 99th, {p999:.2} ms 99.9th.",
            n as f64 / secs,
            bytes as f64 / secs / 1e6,
            h.mean() / 1000.0,
            ms(h.max())
        );
    }
    if errors > 0 {
        return Err(format!("{errors} records failed").into());
    }
    Ok(())
}

fn consumer(common: &Common, group: Option<&str>, extra: &[String]) -> Result<BaseConsumer, Error> {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", &common.bootstrap_server)
        .set("group.id", group.unwrap_or("millrace-bench-unused"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.max.bytes", "52428800")
        .set("max.partition.fetch.bytes", "10485760");
    props(&mut cfg, extra)?;
    let c: BaseConsumer = cfg.create()?;
    match group {
        Some(_) => c.subscribe(&[&common.topic])?,
        None => {
            let md = c.fetch_metadata(Some(&common.topic), Duration::from_secs(10))?;
            let mut tpl = TopicPartitionList::new();
            for t in md.topics() {
                for p in t.partitions() {
                    tpl.add_partition_offset(&common.topic, p.id(), Offset::Beginning)?;
                }
            }
            c.assign(&tpl)?;
        }
    }
    Ok(c)
}

fn consume(a: ConsumeArgs) -> Result<(), Error> {
    let c = consumer(&a.common, a.group.as_deref(), &a.consumer_props)?;
    let start = Instant::now();
    let mut first: Option<Duration> = None;
    let (mut n, mut bytes) = (0u64, 0u64);
    let mut idle = Instant::now();
    while n < a.messages {
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                first.get_or_insert_with(|| start.elapsed());
                n += 1;
                bytes += m.payload().map_or(0, |p| p.len()) as u64;
                idle = Instant::now();
            }
            Some(Err(e)) => return Err(e.into()),
            None if idle.elapsed() > Duration::from_millis(a.timeout_ms) => break,
            None => {}
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let first_ms = first.map_or(-1.0, |d| d.as_secs_f64() * 1000.0);
    let mb = bytes as f64 / 1e6;
    if a.common.json {
        println!(
            "{{\"records\":{n},\"mb\":{mb:.3},\"seconds\":{secs:.3},\"mb_per_sec\":{:.3},\"records_per_sec\":{:.1},\"first_record_ms\":{first_ms:.1}}}",
            mb / secs,
            n as f64 / secs
        );
    } else {
        println!(
            "data.consumed.in.MB, MB.sec, data.consumed.in.nMsg, nMsg.sec, time.to.first.record.ms"
        );
        println!("{mb:.4}, {:.4}, {n}, {:.4}, {first_ms:.1}", mb / secs, n as f64 / secs);
    }
    if n < a.messages {
        return Err(format!("only {n} of {} records arrived", a.messages).into());
    }
    Ok(())
}

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

fn e2e(a: E2eArgs) -> Result<(), Error> {
    // The producer's metadata request creates the topic where the broker auto-creates topics
    // (librdkafka consumers ask not to).
    {
        let p: BaseProducer =
            ClientConfig::new().set("bootstrap.servers", &a.common.bootstrap_server).create()?;
        p.client().fetch_metadata(Some(&a.common.topic), Duration::from_secs(10))?;
    }
    let c = consumer(&a.common, None, &["fetch.wait.max.ms=5".into(), "fetch.min.bytes=1".into()])?;
    let stats = Stats::new();
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", &a.common.bootstrap_server)
        .set("acks", &a.acks)
        .set("enable.idempotence", "false")
        .set("linger.ms", "0");
    let producer: BaseProducer<Ctx> = cfg.create_with_context(Ctx(stats))?;
    let total = a.rate * a.seconds;
    let interval_us = 1_000_000 / a.rate.max(1);
    // Warm up before the clock starts: one record (id past the measured ones) produced,
    // acknowledged and consumed, so that connection setup and the consumer's first fetches are
    // not counted as the first records' latency.
    let mut payload = vec![b'x'; a.record_size.max(16)];
    payload[8..16].copy_from_slice(&u64::MAX.to_be_bytes());
    let poll_wait = || producer.poll(Duration::from_millis(5));
    send(|r| producer.send(r).map_err(Box::new), poll_wait, &a.common.topic, &payload)?;
    producer.flush(Duration::from_secs(10))?;
    let warm_until = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            if m.payload().is_some_and(|p| p.len() >= 16 && p[8..16] == u64::MAX.to_be_bytes()) {
                break;
            }
        }
        if Instant::now() >= warm_until {
            return Err("the warm-up record was not consumed within 10 s".into());
        }
    }
    let start_us = now_us();
    let mut hist = histogram();
    let mut seen: HashSet<u64> = HashSet::new();
    let mut next = 0u64;
    let deadline = Instant::now() + Duration::from_secs(a.seconds + 30);
    while (seen.len() as u64) < total && Instant::now() < deadline {
        // Send everything that is due; each record carries its scheduled send time.
        while next < total && start_us + next * interval_us <= now_us() {
            let scheduled = start_us + next * interval_us;
            payload[..8].copy_from_slice(&scheduled.to_be_bytes());
            payload[8..16].copy_from_slice(&next.to_be_bytes());
            send(|r| producer.send(r).map_err(Box::new), poll_wait, &a.common.topic, &payload)?;
            next += 1;
        }
        producer.poll(Duration::ZERO);
        if let Some(Ok(m)) = c.poll(Duration::from_micros(500)) {
            if let Some(p) = m.payload().filter(|p| p.len() >= 16) {
                let scheduled = u64::from_be_bytes(p[..8].try_into().unwrap_or([0; 8]));
                let id = u64::from_be_bytes(p[8..16].try_into().unwrap_or([0; 8]));
                if id < total && seen.insert(id) {
                    hist.saturating_record(now_us().saturating_sub(scheduled).max(1));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(10))?;
    let q = |x: f64| ms(hist.value_at_quantile(x));
    let (n, rate) = (seen.len(), a.rate);
    let (p50, p95, p99, p999, max) = (q(0.5), q(0.95), q(0.99), q(0.999), ms(hist.max()));
    if a.common.json {
        println!(
            "{{\"records\":{n},\"rate\":{rate},\"latency_ms\":{{\"p50\":{p50:.3},\"p95\":{p95:.3},\"p99\":{p99:.3},\"p999\":{p999:.3},\"max\":{max:.3}}}}}"
        );
    } else {
        println!(
            "{n} records at {rate}/s: end-to-end latency {p50:.2} ms 50th, {p95:.2} ms 95th, {p99:.2} ms 99th, {p999:.2} ms 99.9th, {max:.2} ms max (from scheduled send time)."
        );
    }
    if (seen.len() as u64) < total {
        return Err(format!("only {} of {total} records arrived", seen.len()).into());
    }
    Ok(())
}

/// CPU time (user + system) of the calling thread, in seconds.
fn thread_cpu_seconds() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

fn baseline_disk(a: BaselineDiskArgs) -> Result<(), Error> {
    use std::io::Write;
    if a.bytes == 0 || a.chunk == 0 {
        return Err("--bytes and --chunk must be positive".into());
    }
    if a.drop_behind.is_some() && (!a.fsync_every_chunk || a.direct) {
        return Err("--drop-behind needs --fsync-every-chunk and buffered writes".into());
    }
    if a.direct && !a.chunk.is_multiple_of(DIRECT_BLOCK) {
        return Err(format!("--direct needs a --chunk that is a multiple of {DIRECT_BLOCK}").into());
    }
    let path = a.dir.join(format!("millrace-bench-baseline-{}", std::process::id()));
    // O_DIRECT needs a block-aligned buffer.
    let aligned = AlignedBuf::new(a.chunk, |i| (i % 251) as u8);
    let buf = aligned.as_slice();
    // Time of each chunk's write (+ fdatasync), in microseconds.
    let mut hist = histogram();
    let start = Instant::now();
    let cpu0 = thread_cpu_seconds();
    let mut written = 0u64;
    let mut dropped = 0u64;
    {
        let mut f = create_file(&path, a.direct)?;
        while written < a.bytes {
            let t = Instant::now();
            f.write_all(buf)?;
            written += buf.len() as u64;
            if a.fsync_every_chunk {
                f.sync_data()?;
            }
            if let Some(window) = a.drop_behind {
                const STEP: u64 = 4 << 20;
                if written >= dropped.saturating_add(window).saturating_add(STEP) {
                    let to = (written - window) & !(STEP - 1);
                    use std::os::fd::AsRawFd as _;
                    // SAFETY: plain system call on an open descriptor; no memory is passed.
                    unsafe {
                        libc::posix_fadvise(
                            f.as_raw_fd(),
                            dropped as libc::off_t,
                            (to - dropped) as libc::off_t,
                            libc::POSIX_FADV_DONTNEED,
                        )
                    };
                    dropped = to;
                }
            }
            hist.saturating_record(t.elapsed().as_micros() as u64);
        }
        f.sync_data()?;
    }
    let cpu = thread_cpu_seconds() - cpu0;
    let secs = start.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&path);
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "{{\"mb_per_sec\":{:.3},\"seconds\":{secs:.3},\"cpu_s_per_gb\":{:.4},\
         \"chunk_latency_ms\":{{\"p50\":{:.3},\"p99\":{:.3},\"p999\":{:.3},\"max\":{:.3}}}}}",
        written as f64 / secs / 1e6,
        cpu / (written as f64 / 1e9),
        ms(0.5),
        ms(0.99),
        ms(0.999),
        hist.max() as f64 / 1000.0
    );
    Ok(())
}

fn baseline_tcp(a: BaselineTcpArgs) -> Result<(), Error> {
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    if a.bytes == 0 || a.chunk == 0 {
        return Err("--bytes and --chunk must be positive".into());
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let total = a.bytes;
    let reader = std::thread::spawn(move || -> std::io::Result<(u64, f64)> {
        let (mut s, _) = listener.accept()?;
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0u64;
        let cpu0 = thread_cpu_seconds();
        while got < total {
            let n = s.read(&mut buf)?;
            if n == 0 {
                break;
            }
            got += n as u64;
        }
        Ok((got, thread_cpu_seconds() - cpu0))
    });
    // The file to send from, in the page cache before the clock starts.
    const FILE_BYTES: u64 = 64 << 20;
    let file = match &a.sendfile_dir {
        Some(dir) => {
            let path = dir.join(format!("millrace-bench-sendfile-{}", std::process::id()));
            let mut f = std::fs::File::options()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)?;
            let _ = std::fs::remove_file(&path);
            let block = vec![7u8; 1 << 20];
            for _ in 0..FILE_BYTES >> 20 {
                f.write_all(&block)?;
            }
            let mut sink = Vec::new();
            std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(0))?;
            f.read_to_end(&mut sink)?;
            Some(f)
        }
        None => None,
    };
    let buf = vec![7u8; a.chunk];
    let start = Instant::now();
    let mut s = std::net::TcpStream::connect(addr)?;
    let cpu0 = thread_cpu_seconds();
    let mut sent = 0u64;
    while sent < total {
        match &file {
            Some(f) => {
                let mut off = (sent % FILE_BYTES) as libc::off_t;
                let len = a.chunk.min((FILE_BYTES - off as u64) as usize);
                // SAFETY: both descriptors are open; `off` is ours to update.
                let n = unsafe { libc::sendfile(s.as_raw_fd(), f.as_raw_fd(), &mut off, len) };
                if n < 0 {
                    return Err(std::io::Error::last_os_error().into());
                }
                sent += n as u64;
            }
            None => {
                s.write_all(&buf)?;
                sent += buf.len() as u64;
            }
        }
    }
    let send_cpu = thread_cpu_seconds() - cpu0;
    drop(s);
    let (got, recv_cpu) = reader.join().map_err(|_| "reader panicked")??;
    let secs = start.elapsed().as_secs_f64();
    let gb = got as f64 / 1e9;
    println!(
        "{{\"mb_per_sec\":{:.3},\"seconds\":{secs:.3},\"send_cpu_s_per_gb\":{:.4},\"recv_cpu_s_per_gb\":{:.4}}}",
        got as f64 / secs / 1e6,
        send_cpu / gb,
        recv_cpu / gb
    );
    Ok(())
}

fn baseline_wakeup(a: BaselineWakeupArgs) -> Result<(), Error> {
    if !a.seconds.is_finite() || a.seconds <= 0.0 || a.interval_us == 0 {
        return Err("--seconds and --interval-us must be positive".into());
    }
    let interval = Duration::from_micros(a.interval_us);
    let mut hist = histogram();
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(a.seconds);
    loop {
        let due = Instant::now() + interval;
        if due > end {
            break;
        }
        std::thread::sleep(interval);
        let late = Instant::now().saturating_duration_since(due);
        hist.saturating_record(late.as_micros().max(1) as u64);
    }
    println!(
        "{{\"wakeups\":{},\"interval_us\":{},\"late_ms\":{{\"p50\":{:.3},\"p99\":{:.3},\"p999\":{:.3},\"max\":{:.3}}}}}",
        hist.len(),
        a.interval_us,
        ms(hist.value_at_quantile(0.5)),
        ms(hist.value_at_quantile(0.99)),
        ms(hist.value_at_quantile(0.999)),
        ms(hist.max())
    );
    Ok(())
}
