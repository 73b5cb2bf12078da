//! `millrace-bench`: Kafka-style perf tools on librdkafka (the `rdkafka` crate), usable against
//! any Kafka-compatible broker.
//!
//! - `produce`: the options and output shape of Kafka's `kafka-producer-perf-test`.
//! - `consume`: the options and output columns of `kafka-consumer-perf-test` (by default every
//!   partition assigned rather than a group: Millrace has no consumer groups yet), plus the
//!   time to the first record.
//! - `e2e-latency`: produce at a fixed rate, consume, and report produce-to-consume latency
//!   percentiles from an HDR histogram, measured from each record's *scheduled* send time, so
//!   that a stall delays every record behind it (coordinated omission corrected).
//!
//! Every command takes `--json` for one machine-readable line at the end. In the human lines, as
//! in Kafka's tools, "MB" is 2^20 bytes; in `--json`, 10^6 bytes.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand};
use hdrhistogram::Histogram;
use millrace_bench::perf_tool::{self, DateFormat, DateTime, Window, WindowSeries};
use millrace_bench::{create_file, AlignedBuf, DIRECT_BLOCK};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, DefaultConsumerContext};
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
    /// Paced: requests of `--chunk` bytes arrive at this many MB/s (10^6 bytes), one every
    /// chunk / rate, as from a producer with that linger; everything that has arrived is
    /// written with one `pwritev` and one fdatasync, as an ideal group-committing broker would.
    /// Adds each request's latency from its arrival to its sync, and its records' (of
    /// `--record-size`, arrived evenly over the interval before it); needs --fsync-every-chunk
    #[arg(long)]
    rate_mb: Option<f64>,
    /// Bytes per record, for the records' latency of `--rate-mb`
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..))]
    record_size: u64,
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
    /// The broker(s) to connect to [default: 127.0.0.1:9092]; given, over any properties file
    /// or property, as with Kafka's tools.
    #[arg(long)]
    bootstrap_server: Option<String>,
    /// Print one JSON object at the end instead of the human lines.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
#[command(group(
    clap::ArgGroup::new("payload")
        .required(true)
        .args(["record_size", "payload_file", "payload_monotonic"])
))]
struct ProduceArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long)]
    topic: String,
    #[arg(long)]
    num_records: u64,
    /// The first this many records warm up: after the run's summary line comes one for the
    /// records after them, the steady state (Kafka 4.1's `--warmup-records`, KIP-1052).
    #[arg(long, default_value_t = 0)]
    warmup_records: u64,
    /// Every record's value: this many random uppercase letters (one of `--record-size`,
    /// `--payload-file` and `--payload-monotonic`).
    #[arg(long)]
    record_size: Option<usize>,
    /// Payloads separated by `--payload-delimiter`, sent in turn (Kafka's tool picks them at
    /// random).
    #[arg(long)]
    payload_file: Option<std::path::PathBuf>,
    /// Every record's value is its number in the run, in decimal: "0", "1", ... (as Kafka's
    /// tool).
    #[arg(long)]
    payload_monotonic: bool,
    /// What separates the payloads of `--payload-file`; `\n`, `\r`, `\t` and `\\` stand for
    /// those characters.
    #[arg(long, default_value = "\\n")]
    payload_delimiter: String,
    /// Records per second; -1 for no limit.
    #[arg(long, allow_hyphen_values = true, default_value_t = -1)]
    throughput: i64,
    /// librdkafka producer properties `k=v` (repeatable); they take precedence over
    /// `--producer.config`, `--acks` and `--compression`.
    #[arg(long, visible_alias = "command-property", num_args = 1..)]
    producer_props: Vec<String>,
    /// A producer properties file (`k=v` lines, as Kafka's tool takes; the keys are
    /// librdkafka's, which share most of the Java client's names).
    #[arg(long = "producer.config", visible_alias = "command-config", value_name = "CONFIG_FILE")]
    producer_config: Option<std::path::PathBuf>,
    /// `acks` (default all); over `--producer.config`.
    #[arg(long, allow_hyphen_values = true)]
    acks: Option<String>,
    /// `compression.type` (default none); over `--producer.config`.
    #[arg(long)]
    compression: Option<String>,
    /// At the end, librdkafka's view of the run from its 1 s statistics windows
    /// (`statistics.interval.ms`): the requests' round trip to the broker (`rtt`), the time
    /// records waited in the producer's queue (`int_latency`, linger included) and requests
    /// in its send queue (`outbuf_latency`), and the batches' size.
    #[arg(long)]
    print_metrics: bool,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("topics").required(true).args(["topic", "include"])))]
struct ConsumeArgs {
    #[command(flatten)]
    common: Common,
    /// The topic to consume (one of `--topic` and `--include`).
    #[arg(long)]
    topic: Option<String>,
    /// A regular expression: every topic whose whole name it matches (Kafka 4.2's
    /// `--include`; without `--group`, the topics that exist when the tool starts).
    #[arg(long)]
    include: Option<String>,
    /// Stop after this many records (Kafka's tool: `--num-records`, before 4.2 `--messages`).
    #[arg(long = "num-records", visible_alias = "messages")]
    messages: u64,
    /// Consume through a group (needs a broker with consumer groups); default: assign every
    /// partition (Kafka's tool always uses a group, `perf-consumer-<n>` by default).
    #[arg(long)]
    group: Option<String>,
    /// Give up after this many milliseconds without a record.
    #[arg(long = "timeout", visible_alias = "timeout-ms", default_value_t = 10_000)]
    timeout_ms: u64,
    /// Start at the end of every partition (with a group: where it has no committed offset)
    /// instead of the beginning.
    #[arg(long)]
    from_latest: bool,
    /// The most a fetch returns per partition, `max.partition.fetch.bytes` (Kafka's tool: 1 MiB
    /// by default; here 10 MiB, so that one partition is not capped at 1 MiB per fetch).
    #[arg(long, default_value_t = 10 << 20)]
    fetch_size: u64,
    /// The socket's receive buffer, `socket.receive.buffer.bytes` (default: the system's).
    #[arg(long)]
    socket_buffer_size: Option<u64>,
    /// A consumer properties file (`k=v` lines, librdkafka's keys).
    #[arg(long = "command-config", visible_alias = "consumer.config", value_name = "CONFIG_FILE")]
    consumer_config: Option<std::path::PathBuf>,
    /// librdkafka consumer properties `k=v` (repeatable); they take precedence over the file
    /// and the options above.
    #[arg(long, visible_alias = "command-property", num_args = 1..)]
    consumer_props: Vec<String>,
    /// Print a line every `--reporting-interval` with that interval's figures.
    #[arg(long)]
    show_detailed_stats: bool,
    /// Milliseconds between the lines of `--show-detailed-stats`.
    #[arg(long, default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(1..))]
    reporting_interval: u64,
    /// The time columns' format, in `java.text.SimpleDateFormat` letters (y M d H h m s S a).
    #[arg(long, default_value = "yyyy-MM-dd HH:mm:ss:SSS")]
    date_format: String,
    /// No header line.
    #[arg(long)]
    hide_header: bool,
    /// At the end, librdkafka's view of the run from its 1 s statistics windows
    /// (`statistics.interval.ms`): the requests' round trip to the broker (`rtt`; for a
    /// consumer mostly its fetches, including the broker's wait for data up to
    /// `fetch.wait.max.ms`), requests in its send queue (`outbuf_latency`), the batches
    /// fetched (per partition and fetch), and the largest lag behind a partition's end that
    /// it reported.
    #[arg(long)]
    print_metrics: bool,
}

#[derive(Debug, Args)]
struct E2eArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long)]
    topic: String,
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

impl Common {
    /// Sets `--bootstrap-server`, when given, over the user's properties (as Kafka's tools do);
    /// without it, what [`Common::config`] set or the properties say stays.
    fn override_bootstrap(&self, cfg: &mut ClientConfig) {
        if let Some(bs) = &self.bootstrap_server {
            cfg.set("bootstrap.servers", bs);
        }
    }

    /// `--bootstrap-server`, or the default.
    fn bootstrap(&self) -> &str {
        self.bootstrap_server.as_deref().unwrap_or("127.0.0.1:9092")
    }

    /// A client configuration with `bootstrap.servers` set (the user's properties, if any,
    /// go over it, then [`Common::override_bootstrap`]).
    fn config(&self) -> ClientConfig {
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", self.bootstrap());
        cfg
    }
}

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

/// Sets the properties of a client properties file (`--producer.config`, `--command-config`).
fn config_file(cfg: &mut ClientConfig, path: Option<&std::path::Path>) -> Result<(), Error> {
    let Some(path) = path else { return Ok(()) };
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    for (k, v) in
        perf_tool::parse_properties(&text).map_err(|e| format!("{}: {e}", path.display()))?
    {
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

/// Acknowledged records, over the whole run or its steady state: their latencies (the
/// histogram's count is the records') and their bytes, under one lock.
#[derive(Debug)]
struct Tally(Mutex<(Histogram<u64>, u64)>);

impl Tally {
    fn new() -> Tally {
        Tally(Mutex::new((histogram(), 0)))
    }

    fn record(&self, us: u64, len: usize) {
        if let Ok(mut t) = self.0.lock() {
            t.0.saturating_record(us);
            t.1 += len as u64;
        }
    }
}

/// Latency bookkeeping shared with the delivery callback.
#[derive(Debug)]
struct Stats {
    all: Tally,
    /// The records after `--warmup-records`.
    steady: Tally,
    /// Latencies since the last progress line (`None` without progress lines: `--json`).
    window: Option<Mutex<Histogram<u64>>>,
    errors: AtomicU64,
    /// librdkafka's statistics windows (`--print-metrics`), and when the last one closed, on
    /// librdkafka's clock (`CLOCK_MONOTONIC`, microseconds).
    client: Mutex<ClientMetrics>,
    last_window_us: AtomicI64,
}

/// librdkafka's statistics over a run (`--print-metrics`): the real brokers' windows (not the
/// bootstrap connections') and every topic's batches.
#[derive(Debug, Default)]
struct ClientMetrics {
    rtt: WindowSeries,
    int_latency: WindowSeries,
    outbuf_latency: WindowSeries,
    batch_bytes: WindowSeries,
    batch_records: WindowSeries,
    /// The largest `consumer_lag_stored` of any partition in any window (a consumer's).
    consumer_lag_max: Option<i64>,
}

impl Stats {
    /// `progress`: the latencies are also kept for `produce`'s progress lines.
    fn new(progress: bool) -> Arc<Stats> {
        Arc::new(Stats {
            all: Tally::new(),
            steady: Tally::new(),
            window: progress.then(|| Mutex::new(histogram())),
            errors: AtomicU64::new(0),
            client: Mutex::new(ClientMetrics::default()),
            last_window_us: AtomicI64::new(0),
        })
    }
}

struct Ctx(Arc<Stats>);

impl ConsumerContext for Ctx {}

fn window(w: &rdkafka::statistics::Window) -> Window {
    Window { cnt: w.cnt, avg: w.avg, p99: w.p99, max: w.max }
}

impl ClientContext for Ctx {
    fn stats(&self, s: rdkafka::statistics::Statistics) {
        if let Ok(mut guard) = self.0.client.lock() {
            let m = &mut *guard;
            for b in s.brokers.values().filter(|b| b.nodeid >= 0) {
                for (series, w) in [
                    (&mut m.rtt, &b.rtt),
                    (&mut m.int_latency, &b.int_latency),
                    (&mut m.outbuf_latency, &b.outbuf_latency),
                ] {
                    if let Some(w) = w {
                        series.add(window(w));
                    }
                }
            }
            for t in s.topics.values() {
                m.batch_bytes.add(window(&t.batchsize));
                m.batch_records.add(window(&t.batchcnt));
                // Behind the end, from the offset stored for the records the application took
                // (`consumer_lag` counts from the committed offset, and the tool commits none);
                // -1 where unknown (a producer's partitions, a consumer's before its first record).
                let lags = t.partitions.values().map(|p| p.consumer_lag_stored);
                for lag in lags.filter(|&l| l >= 0) {
                    m.consumer_lag_max = m.consumer_lag_max.max(Some(lag));
                }
            }
        }
        self.0.last_window_us.store(s.ts, Ordering::Relaxed);
    }
}

/// `--print-metrics`' lines (`json` false) or its `"client"` object (`json` true).
fn client_metrics(m: &ClientMetrics, json: bool) -> String {
    let times = [
        ("rtt", "request round trip to the broker (rtt)", &m.rtt),
        ("int_latency", "records in the producer queue (int_latency)", &m.int_latency),
        ("outbuf_latency", "requests in the send queue (outbuf_latency)", &m.outbuf_latency),
    ];
    let mut out = Vec::new();
    for (key, what, series) in times {
        let Some(x) = series.summary() else { continue };
        let ms = |us: f64| us / 1000.0;
        let (n, avg, max) = (x.count, ms(x.avg), ms(x.max as f64));
        let (median, worst) = (ms(x.p99_median_window as f64), ms(x.p99_worst_window as f64));
        out.push(if json {
            format!(
                "\"{key}_ms\":{{\"count\":{n},\"avg\":{avg:.3},\"p99_median_window\":{median:.3},\"p99_worst_window\":{worst:.3},\"max\":{max:.3}}}"
            )
        } else {
            format!(
                "{what}: {n} values, avg {avg:.3} ms, p99 {median:.3} ms (median 1 s window) / {worst:.3} ms (worst), max {max:.3} ms"
            )
        });
    }
    if let (Some(b), Some(r)) = (m.batch_bytes.summary(), m.batch_records.summary()) {
        out.push(if json {
            format!(
                "\"batches\":{},\"batch_bytes_avg\":{:.0},\"batch_records_avg\":{:.1}",
                b.count, b.avg, r.avg
            )
        } else {
            format!("batches: {}, avg {:.0} bytes, {:.1} records", b.count, b.avg, r.avg)
        });
    }
    if let Some(lag) = m.consumer_lag_max {
        out.push(match json {
            true => format!("\"consumer_lag_max\":{lag}"),
            false => format!("consumer lag: at most {lag} records behind a partition's end"),
        });
    }
    if json {
        format!("{{{}}}", out.join(","))
    } else {
        out.join("\n")
    }
}

/// `statistics.interval.ms` as configured (1000 if it is not: `--print-metrics` sets it).
fn statistics_interval(cfg: &ClientConfig) -> u64 {
    cfg.get("statistics.interval.ms").and_then(|v| v.parse().ok()).unwrap_or(1000)
}

/// `CLOCK_MONOTONIC` in microseconds, librdkafka's clock (its statistics' `ts`).
fn monotonic_us() -> i64 {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes only into `t`, which lives for the call.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    // time_t and c_long are i64 here, i32 on 32-bit targets.
    #[allow(clippy::useless_conversion)]
    let (secs, nanos) = (i64::from(t.tv_sec), i64::from(t.tv_nsec));
    secs * 1_000_000 + nanos / 1000
}

/// Waits for the statistics window in progress at the end of a run (it closes one interval
/// after the end at the latest; one that closed before the end and is delivered late does not
/// count), calling `serve` (which waits up to 10 ms, serving the client's events where the
/// caller must poll for them), then gives `--print-metrics`' lines or JSON object.
fn final_client_metrics(
    stats: &Stats,
    interval: u64,
    json: bool,
    serve: impl Fn(),
) -> Result<String, Error> {
    let end = monotonic_us();
    let until = Instant::now() + Duration::from_millis(interval + 500);
    while stats.last_window_us.load(Ordering::Relaxed) < end && Instant::now() < until {
        serve();
    }
    let m = stats.client.lock().map_err(|_| "poisoned")?;
    Ok(client_metrics(&m, json))
}

/// A record's delivery opaque: when it was handed to the client, and whether it is past the
/// warm-up.
#[derive(Debug)]
struct Sent {
    at: Instant,
    steady: bool,
}

impl ProducerContext for Ctx {
    type DeliveryOpaque = Box<Sent>;
    fn delivery(&self, result: &DeliveryResult<'_>, sent: Self::DeliveryOpaque) {
        match result {
            Ok(m) => {
                let us = sent.at.elapsed().as_micros().max(1) as u64;
                self.0.all.record(us, m.payload_len());
                if sent.steady {
                    self.0.steady.record(us, m.payload_len());
                }
                if let Some(w) = &self.0.window {
                    let _ = w.lock().map(|mut h| h.saturating_record(us));
                }
            }
            Err((e, _)) => {
                if self.0.errors.fetch_add(1, Ordering::Relaxed) < 5 {
                    eprintln!("delivery failed: {e}");
                }
            }
        }
    }
}

/// A record as the tools send it: no key, a [`Sent`] as its delivery opaque.
type Record<'a> = BaseRecord<'a, [u8], [u8], Box<Sent>>;

/// Sends one record with `try_send` (a `BaseProducer`'s or a `ThreadedProducer`'s `send`),
/// calling `wait` while the client's queue is full; any other error is returned (a record that
/// can never be sent must not be retried forever). `steady`: it counts to the steady state.
fn send<'a>(
    try_send: impl Fn(Record<'a>) -> Result<(), Box<(KafkaError, Record<'a>)>>,
    wait: impl Fn(),
    topic: &'a str,
    payload: &'a [u8],
    steady: bool,
) -> Result<(), KafkaError> {
    let mut opaque = Box::new(Sent { at: Instant::now(), steady });
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

/// What `produce` sends as values.
enum Payloads {
    /// These, in turn.
    InTurn(Vec<Vec<u8>>),
    /// Each record's number in the run, in decimal.
    Monotonic,
}

/// How often `produce` prints a progress line, as Kafka's tool does.
const PROGRESS: Duration = Duration::from_secs(5);

/// The sending loop of `produce`: every record, at `--throughput` records/s when given, with a
/// progress line every 5 s (delivery reports are polled elsewhere). Returns when the first
/// record after the warm-up was sent, if there is a warm-up.
fn send_all(
    a: &ProduceArgs,
    payloads: &Payloads,
    producer: &ThreadedProducer<Ctx>,
    stats: &Stats,
    start: Instant,
) -> Result<Option<Instant>, Error> {
    let mut last_report = start;
    let (mut window_records, mut window_bytes) = (0u64, 0u64);
    let mut steady_since = None;
    let mut number = String::new();
    for i in 0..a.num_records {
        if a.throughput > 0 {
            let due = start + Duration::from_secs_f64(i as f64 / a.throughput as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        let payload = match payloads {
            Payloads::InTurn(p) => &p[(i % p.len() as u64) as usize][..],
            Payloads::Monotonic => {
                number.clear();
                let _ = write!(number, "{i}");
                number.as_bytes()
            }
        };
        let steady = a.warmup_records > 0 && i >= a.warmup_records;
        if steady && steady_since.is_none() {
            steady_since = Some(Instant::now());
        }
        let wait = || producer.poll(Duration::from_millis(5));
        send(|r| producer.send(r).map_err(Box::new), wait, &a.topic, payload, steady)?;
        window_records += 1;
        window_bytes += payload.len() as u64;
        if let Some(window) = stats.window.as_ref().filter(|_| last_report.elapsed() >= PROGRESS) {
            let secs = last_report.elapsed().as_secs_f64();
            let mut w = window.lock().map_err(|_| "poisoned")?;
            println!(
                "{window_records} records sent, {:.1} records/sec ({:.2} MB/sec), {:.1} ms avg latency, {:.1} ms max latency.",
                window_records as f64 / secs,
                window_bytes as f64 / secs / MIB,
                w.mean() / 1000.0,
                ms(w.max())
            );
            w.reset();
            (window_records, window_bytes) = (0, 0);
            last_report = Instant::now();
        }
    }
    Ok(steady_since)
}

/// `produce`'s final figures for the records of a [`Tally`] over `secs`.
struct Summary {
    records: u64,
    secs: f64,
    bytes: u64,
    avg: f64,
    max: f64,
    /// p50, p95, p99, p99.9.
    pct: [f64; 4],
}

impl Summary {
    fn of(t: &Tally, secs: f64) -> Result<Summary, Error> {
        let t = t.0.lock().map_err(|_| "poisoned")?;
        let (h, bytes) = (&t.0, t.1);
        let q = |x: f64| ms(h.value_at_quantile(x));
        Ok(Summary {
            records: h.len(),
            secs,
            bytes,
            avg: h.mean() / 1000.0,
            max: ms(h.max()),
            pct: [q(0.5), q(0.95), q(0.99), q(0.999)],
        })
    }

    fn rate(&self) -> f64 {
        self.records as f64 / self.secs
    }

    /// Kafka's final line; `what` goes after the count (" steady state").
    fn line(&self, what: &str) -> String {
        let (n, rate, mib) = (self.records, self.rate(), self.bytes as f64 / self.secs / MIB);
        let (avg, max, [p50, p95, p99, p999]) = (self.avg, self.max, self.pct);
        format!(
            "{n}{what} records sent, {rate:.6} records/sec ({mib:.2} MB/sec), {avg:.2} ms avg latency, {max:.2} ms max latency, {p50:.2} ms 50th, {p95:.2} ms 95th, {p99:.2} ms 99th, {p999:.2} ms 99.9th."
        )
    }

    /// The figures as JSON fields (no braces).
    fn json(&self) -> String {
        let (n, secs, rate) = (self.records, self.secs, self.rate());
        let mb = self.bytes as f64 / secs / 1e6;
        let (avg, max, [p50, p95, p99, p999]) = (self.avg, self.max, self.pct);
        format!(
            "\"records\":{n},\"seconds\":{secs:.3},\"records_per_sec\":{rate:.1},\"mb_per_sec\":{mb:.3},\"latency_ms\":{{\"avg\":{avg:.3},\"max\":{max:.3},\"p50\":{p50:.3},\"p95\":{p95:.3},\"p99\":{p99:.3},\"p999\":{p999:.3}}}"
        )
    }
}

fn produce(a: ProduceArgs) -> Result<(), Error> {
    if a.warmup_records >= a.num_records && a.warmup_records > 0 {
        return Err("--warmup-records must be less than --num-records".into());
    }
    let payloads = match (&a.payload_file, a.record_size) {
        // clap takes exactly one of the three.
        _ if a.payload_monotonic => Payloads::Monotonic,
        (Some(p), _) => {
            let data = std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?;
            let delimiter = perf_tool::unescape_delimiter(&a.payload_delimiter);
            let payloads = perf_tool::split_payloads(&data, delimiter.as_bytes());
            if !a.common.json {
                let shown = std::fs::canonicalize(p).unwrap_or_else(|_| p.clone());
                println!("Reading payloads from: {}", shown.display());
                println!("Number of messages read: {}", payloads.len());
            }
            if payloads.is_empty() {
                return Err("the payload file holds no payloads".into());
            }
            Payloads::InTurn(payloads)
        }
        // As kafka-producer-perf-test: one payload of random uppercase letters, sent as every
        // record's value (fixed seed, so runs compare).
        (None, Some(n)) => {
            let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
            Payloads::InTurn(vec![(0..n)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    b'A' + (x % 26) as u8
                })
                .collect()])
        }
        (None, None) => {
            return Err("one of --record-size, --payload-file, --payload-monotonic is needed".into())
        }
    };
    let mut cfg = a.common.config();
    cfg.set("acks", "all")
        .set("compression.type", "none")
        .set("enable.idempotence", "false")
        .set("linger.ms", "5")
        .set("batch.size", "1048576")
        .set("queue.buffering.max.kbytes", "1048576")
        .set("queue.buffering.max.messages", "1000000");
    if a.print_metrics {
        cfg.set("statistics.interval.ms", "1000");
    }
    // Kafka's order: the file, then the properties on the command line.
    config_file(&mut cfg, a.producer_config.as_deref())?;
    if let Some(acks) = &a.acks {
        cfg.set("acks", acks);
    }
    if let Some(codec) = &a.compression {
        cfg.set("compression.type", codec);
    }
    props(&mut cfg, &a.producer_props)?;
    a.common.override_bootstrap(&mut cfg);
    let stats = Stats::new(!a.common.json);
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
    let md = producer.client().fetch_metadata(Some(&a.topic), Duration::from_secs(10))?;
    if let Some(e) = md.topics().iter().find_map(|t| t.error()) {
        // Unknown topic with auto-creation off, and the like: say so rather than time out.
        return Err(format!("topic {}: {:?}", a.topic, RDKafkaErrorCode::from(e)).into());
    }
    if a.warmup_records > 0 && !a.common.json {
        println!(
            "Warmup first {} records. Steady state results will print after the complete test summary.",
            a.warmup_records
        );
    }
    let start = Instant::now();
    let steady_since = send_all(&a, &payloads, &producer, &stats, start)?;
    producer.flush(Duration::from_secs(120))?;
    let secs = start.elapsed().as_secs_f64();
    let steady = match steady_since {
        Some(t) => Some(Summary::of(&stats.steady, t.elapsed().as_secs_f64())?),
        None => None,
    };
    let client = match a.print_metrics {
        true => {
            // The producer's own thread serves its statistics.
            let sleep = || std::thread::sleep(Duration::from_millis(10));
            Some(final_client_metrics(&stats, statistics_interval(&cfg), a.common.json, sleep)?)
        }
        false => None,
    };
    let all = Summary::of(&stats.all, secs)?;
    let errors = stats.errors.load(Ordering::Relaxed);
    if a.common.json {
        let steady = steady.map(|s| format!(",\"steady_state\":{{{}}}", s.json()));
        let client = client.map(|c| format!(",\"client\":{c}"));
        println!(
            "{{{},\"errors\":{errors}{}{}}}",
            all.json(),
            steady.unwrap_or_default(),
            client.unwrap_or_default()
        );
    } else {
        // As Kafka's tool: the whole run, then the steady state, then the metrics.
        println!("{}", all.line(""));
        if let Some(s) = steady {
            println!("{}", s.line(" steady state"));
        }
        if let Some(c) = client {
            println!("{c}");
        }
    }
    if errors > 0 {
        return Err(format!("{errors} records failed").into());
    }
    Ok(())
}

/// What a consumer reads: one topic, or every topic whose whole name a regular expression
/// matches (`--include`).
enum Topics {
    Named(String),
    Matching { pattern: String, regex: regex::Regex },
}

impl Topics {
    /// `--topic` or `--include` (clap takes exactly one).
    fn of(topic: Option<&str>, include: Option<&str>) -> Result<Topics, Error> {
        match (topic, include) {
            (Some(t), _) => Ok(Topics::Named(t.to_string())),
            (None, Some(p)) => {
                // The whole name must match, as Java's `Pattern.matches`.
                let regex = regex::Regex::new(&format!("^(?:{p})$"))
                    .map_err(|e| format!("--include {p:?}: {e}"))?;
                Ok(Topics::Matching { pattern: p.to_string(), regex })
            }
            (None, None) => Err("one of --topic and --include is needed".into()),
        }
    }

    /// The one topic to ask the metadata for, if not all.
    fn named(&self) -> Option<&str> {
        match self {
            Topics::Named(t) => Some(t),
            Topics::Matching { .. } => None,
        }
    }

    /// Whether topic `name` is one of these.
    fn takes(&self, name: &str) -> bool {
        match self {
            Topics::Named(t) => t == name,
            Topics::Matching { regex, .. } => regex.is_match(name),
        }
    }
}

/// A consumer of `topics`: through `group` when given, else assigned every partition of them
/// from the beginning (or the end, `from_latest`). `tune` sets the caller's properties over
/// the defaults; `--bootstrap-server`, the group and the start then go over those, as Kafka's
/// consumer tool sets its options over its properties.
fn consumer<C: ConsumerContext>(
    common: &Common,
    topics: &Topics,
    group: Option<&str>,
    from_latest: bool,
    context: C,
    tune: impl FnOnce(&mut ClientConfig) -> Result<(), Error>,
) -> Result<BaseConsumer<C>, Error> {
    let mut cfg = common.config();
    cfg.set("enable.auto.commit", "false")
        .set("fetch.max.bytes", "52428800")
        .set("max.partition.fetch.bytes", "10485760");
    tune(&mut cfg)?;
    common.override_bootstrap(&mut cfg);
    cfg.set("group.id", group.unwrap_or("millrace-bench-unused"))
        .set("auto.offset.reset", if from_latest { "latest" } else { "earliest" });
    let c: BaseConsumer<C> = cfg.create_with_context(context)?;
    match (group, topics) {
        (Some(_), Topics::Named(t)) => c.subscribe(&[t])?,
        // librdkafka takes a subscription starting with `^` as a regular expression.
        (Some(_), Topics::Matching { pattern, .. }) => c.subscribe(&[&format!("^({pattern})$")])?,
        (None, _) => {
            let md = c.fetch_metadata(topics.named(), Duration::from_secs(10))?;
            let mut tpl = TopicPartitionList::new();
            let at = if from_latest { Offset::End } else { Offset::Beginning };
            for t in md.topics().iter().filter(|t| topics.takes(t.name())) {
                for p in t.partitions() {
                    tpl.add_partition_offset(t.name(), p.id(), at)?;
                }
            }
            c.assign(&tpl)?;
        }
    }
    Ok(c)
}

/// The calendar fields of `t` in the local time zone (as Kafka's tool prints its times).
fn local_time(t: SystemTime) -> DateTime {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as libc::time_t;
    // SAFETY: an all-zero `tm` is a valid value of the plain C struct.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: localtime_r reads `secs` and writes only into `tm`, both live for the call.
    if unsafe { libc::localtime_r(&secs, &mut tm) }.is_null() {
        // No local time for it (not expected for the present): print UTC.
        // SAFETY: as above.
        unsafe { libc::gmtime_r(&secs, &mut tm) };
    }
    DateTime {
        year: i64::from(tm.tm_year) + 1900,
        month: (tm.tm_mon + 1) as u32,
        day: tm.tm_mday as u32,
        hour: tm.tm_hour as u32,
        minute: tm.tm_min as u32,
        second: tm.tm_sec as u32,
        millis: d.subsec_millis(),
    }
}

const MIB: f64 = 1024.0 * 1024.0;

/// Figures over a stretch of the run, in the columns of Kafka's consumer tool after the time:
/// `data.consumed.in.MB` (total so far), `MB.sec`, `data.consumed.in.nMsg` (total), `nMsg.sec`,
/// `rebalance.time.ms`, `fetch.time.ms`, `fetch.MB.sec`, `fetch.nMsg.sec` (MB being MiB there).
fn kafka_columns(total: (u64, u64), stretch: (u64, u64), ms: u64, join_ms: u64) -> String {
    let (records, bytes) = total;
    let secs = ms.max(1) as f64 / 1000.0;
    let fetch_ms = ms.saturating_sub(join_ms);
    let fetch_secs = fetch_ms as f64 / 1000.0;
    let per_fetch_sec = |x: f64| if fetch_ms == 0 { 0.0 } else { x / fetch_secs };
    format!(
        "{:.4}, {:.4}, {records}, {:.4}, {join_ms}, {fetch_ms}, {:.4}, {:.4}",
        bytes as f64 / MIB,
        stretch.1 as f64 / MIB / secs,
        stretch.0 as f64 / secs,
        per_fetch_sec(stretch.1 as f64 / MIB),
        per_fetch_sec(stretch.0 as f64),
    )
}

fn consume(a: ConsumeArgs) -> Result<(), Error> {
    let date = DateFormat::parse(&a.date_format)?;
    let human = !a.common.json;
    if human && !a.hide_header {
        let rest = "data.consumed.in.MB, MB.sec, data.consumed.in.nMsg, nMsg.sec, rebalance.time.ms, fetch.time.ms, fetch.MB.sec, fetch.nMsg.sec";
        if a.show_detailed_stats {
            println!("time, threadId, {rest}");
        } else {
            println!("start.time, end.time, {rest}, time.to.first.record.ms");
        }
    }
    let start_wall = SystemTime::now();
    let start = Instant::now();
    let stats = Stats::new(false);
    let mut stats_interval = 1000;
    let topics = Topics::of(a.topic.as_deref(), a.include.as_deref())?;
    let c = consumer(
        &a.common,
        &topics,
        a.group.as_deref(),
        a.from_latest,
        Ctx(stats.clone()),
        |cfg| {
            if a.print_metrics {
                cfg.set("statistics.interval.ms", "1000");
            }
            config_file(cfg, a.consumer_config.as_deref())?;
            props(cfg, &a.consumer_props)?;
            // The options go over the properties, as in Kafka's tool.
            cfg.set("max.partition.fetch.bytes", a.fetch_size.to_string());
            if let Some(n) = a.socket_buffer_size {
                cfg.set("socket.receive.buffer.bytes", n.to_string());
            }
            stats_interval = statistics_interval(cfg);
            Ok(())
        },
    )?;
    // Until the group assigns partitions (at once without a group): Kafka's rebalance time.
    let mut join_ms = if a.group.is_none() { Some(0) } else { None };
    let mut first: Option<Duration> = None;
    let (mut n, mut bytes) = (0u64, 0u64);
    let mut idle = Instant::now();
    let interval = Duration::from_millis(a.reporting_interval);
    let (mut last_report, mut last_n, mut last_bytes, mut join_in_round) = (start, 0, 0, 0);
    while n < a.messages {
        let polled = c.poll(Duration::from_millis(100));
        if join_ms.is_none() && c.assignment().is_ok_and(|t| t.count() > 0) {
            let now = Instant::now();
            join_ms = Some((now - start).as_millis() as u64);
            // The part of it in the current reporting interval.
            join_in_round = (now - last_report).as_millis() as u64;
        }
        match polled {
            Some(Ok(m)) => {
                first.get_or_insert_with(|| start.elapsed());
                n += 1;
                bytes +=
                    (m.key().map_or(0, |k| k.len()) + m.payload().map_or(0, |p| p.len())) as u64;
                idle = Instant::now();
                // As Kafka's tool: a line when a record arrives a reporting interval or more
                // after the last line.
                if a.show_detailed_stats && human && last_report.elapsed() >= interval {
                    let ms = last_report.elapsed().as_millis() as u64;
                    let stretch = (n - last_n, bytes - last_bytes);
                    let cols = kafka_columns((n, bytes), stretch, ms, join_in_round);
                    println!("{}, 0, {cols}", date.format(&local_time(SystemTime::now())));
                    (last_report, last_n, last_bytes, join_in_round) =
                        (Instant::now(), n, bytes, 0);
                }
            }
            Some(Err(e)) => return Err(e.into()),
            None if idle.elapsed() > Duration::from_millis(a.timeout_ms) => break,
            None => {}
        }
    }
    let elapsed = start.elapsed();
    let secs = elapsed.as_secs_f64();
    let first_ms = first.map_or(-1.0, |d| d.as_secs_f64() * 1000.0);
    if n < a.messages && human {
        println!(
            "WARNING: Exiting before consuming the expected number of records: timeout ({} ms) exceeded. You can use the --timeout option to increase the timeout.",
            a.timeout_ms
        );
    }
    let mb = bytes as f64 / 1e6;
    let client = match a.print_metrics {
        true => {
            // A consumer's statistics arrive through its poll. Paused, it fetches nothing more,
            // so the last window holds the run's fetches only.
            c.pause(&c.assignment()?)?;
            let serve = || drop(c.poll(Duration::from_millis(10)));
            Some(final_client_metrics(&stats, stats_interval, a.common.json, serve)?)
        }
        false => None,
    };
    if a.common.json {
        let client = client.as_ref().map(|c| format!(",\"client\":{c}")).unwrap_or_default();
        println!(
            "{{\"records\":{n},\"mb\":{mb:.3},\"seconds\":{secs:.3},\"mb_per_sec\":{:.3},\"records_per_sec\":{:.1},\"first_record_ms\":{first_ms:.1}{client}}}",
            mb / secs,
            n as f64 / secs
        );
    } else if !a.show_detailed_stats {
        let ms = elapsed.as_millis() as u64;
        // A group that never assigned anything counts no rebalance time, as in Kafka's tool.
        let cols = kafka_columns((n, bytes), (n, bytes), ms, join_ms.unwrap_or(0));
        println!(
            "{}, {}, {cols}, {first_ms:.1}",
            date.format(&local_time(start_wall)),
            date.format(&local_time(start_wall + elapsed))
        );
    }
    if let Some(c) = client.filter(|_| human) {
        println!("{c}");
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
        let p: BaseProducer = a.common.config().create()?;
        p.client().fetch_metadata(Some(&a.topic), Duration::from_secs(10))?;
    }
    let topics = Topics::Named(a.topic.clone());
    let c = consumer(&a.common, &topics, None, false, DefaultConsumerContext, |cfg| {
        cfg.set("fetch.wait.max.ms", "5").set("fetch.min.bytes", "1");
        Ok(())
    })?;
    let stats = Stats::new(false);
    let mut cfg = a.common.config();
    cfg.set("acks", &a.acks).set("enable.idempotence", "false").set("linger.ms", "0");
    let producer: BaseProducer<Ctx> = cfg.create_with_context(Ctx(stats))?;
    let total = a.rate * a.seconds;
    let interval_us = 1_000_000 / a.rate.max(1);
    // Warm up before the clock starts: one record (id past the measured ones) produced,
    // acknowledged and consumed, so that connection setup and the consumer's first fetches are
    // not counted as the first records' latency.
    let mut payload = vec![b'x'; a.record_size.max(16)];
    payload[8..16].copy_from_slice(&u64::MAX.to_be_bytes());
    let poll_wait = || producer.poll(Duration::from_millis(5));
    send(|r| producer.send(r).map_err(Box::new), poll_wait, &a.topic, &payload, false)?;
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
            send(|r| producer.send(r).map_err(Box::new), poll_wait, &a.topic, &payload, false)?;
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
    if let Some(rate) = a.rate_mb {
        if !rate.is_finite() || rate <= 0.0 || !a.fsync_every_chunk {
            return Err("--rate-mb must be positive and needs --fsync-every-chunk".into());
        }
    }
    let path = a.dir.join(format!("millrace-bench-baseline-{}", std::process::id()));
    // O_DIRECT needs a block-aligned buffer.
    let aligned = AlignedBuf::new(a.chunk, |i| (i % 251) as u8);
    let buf = aligned.as_slice();
    // Time of each write (+ fdatasync), in microseconds.
    let mut hist = histogram();
    let start = Instant::now();
    let cpu0 = thread_cpu_seconds();
    let mut written = 0u64;
    let mut dropper = DropBehind { window: a.drop_behind, dropped: 0 };
    let mut paced_json = String::new();
    {
        let mut f = create_file(&path, a.direct)?;
        match a.rate_mb {
            None => {
                while written < a.bytes {
                    let t = Instant::now();
                    f.write_all(buf)?;
                    written += buf.len() as u64;
                    if a.fsync_every_chunk {
                        f.sync_data()?;
                    }
                    dropper.after_sync(&f, written);
                    hist.saturating_record(t.elapsed().as_micros() as u64);
                }
            }
            Some(rate) => {
                let requests = a.bytes.div_ceil(a.chunk as u64);
                let interval = Duration::from_secs_f64(a.chunk as f64 / (rate * 1e6));
                let records = (a.chunk as u64 / a.record_size).max(1);
                let mut pacer = millrace_bench::Paced::new(interval, requests);
                let (mut request_hist, mut record_hist) = (histogram(), histogram());
                let mut iov = Vec::new();
                let t0 = Instant::now();
                while let Some(next) = pacer.next_arrival() {
                    let now = t0.elapsed();
                    if now < next {
                        std::thread::sleep(next - now);
                    }
                    let got = pacer.take(t0.elapsed(), millrace_storage::io::IOV_MAX as u64);
                    if got.is_empty() {
                        continue;
                    }
                    let t = Instant::now();
                    let n = (got.end - got.start) as usize;
                    let copies = std::iter::repeat_n(buf, n);
                    millrace_storage::io::pwritev_all(&f, written, copies, 1, &mut iov)?;
                    written += (n * buf.len()) as u64;
                    f.sync_data()?;
                    let synced = t0.elapsed();
                    hist.saturating_record(t.elapsed().as_micros() as u64);
                    for j in got {
                        let latency = synced.saturating_sub(pacer.arrival(j));
                        request_hist.saturating_record(latency.as_micros().max(1) as u64);
                        millrace_bench::record_spread(&mut record_hist, latency, interval, records);
                    }
                    dropper.after_sync(&f, written);
                }
                paced_json = format!(
                    ",\"requests\":{requests},\"writes\":{},\"request_bytes\":{},\"interval_ms\":{:.3},\
                     \"request_latency_ms\":{},\"record_latency_ms\":{}",
                    hist.len(),
                    a.chunk,
                    interval.as_secs_f64() * 1e3,
                    percentiles_json(&request_hist),
                    percentiles_json(&record_hist)
                );
            }
        }
        f.sync_data()?;
    }
    let cpu = thread_cpu_seconds() - cpu0;
    let secs = start.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&path);
    println!(
        "{{\"mb_per_sec\":{:.3},\"seconds\":{secs:.3},\"cpu_s_per_gb\":{:.4},\
         \"chunk_latency_ms\":{}{paced_json}}}",
        written as f64 / secs / 1e6,
        cpu / (written as f64 / 1e9),
        percentiles_json(&hist)
    );
    Ok(())
}

/// `{"p50":..,"p99":..,"p999":..,"max":..}` in milliseconds of a histogram of microseconds.
fn percentiles_json(h: &Histogram<u64>) -> String {
    format!(
        "{{\"p50\":{:.3},\"p99\":{:.3},\"p999\":{:.3},\"max\":{:.3}}}",
        ms(h.value_at_quantile(0.5)),
        ms(h.value_at_quantile(0.99)),
        ms(h.value_at_quantile(0.999)),
        ms(h.max())
    )
}

/// `baseline-disk --drop-behind`: the file's pages more than `window` bytes behind its end are
/// dropped from the page cache, in steps of 4 MiB, after each sync.
struct DropBehind {
    window: Option<u64>,
    dropped: u64,
}

impl DropBehind {
    fn after_sync(&mut self, f: &std::fs::File, written: u64) {
        const STEP: u64 = 4 << 20;
        let Some(window) = self.window else { return };
        if written >= self.dropped.saturating_add(window).saturating_add(STEP) {
            let to = (written - window) & !(STEP - 1);
            use std::os::fd::AsRawFd as _;
            // SAFETY: plain system call on an open descriptor; no memory is passed.
            unsafe {
                libc::posix_fadvise(
                    f.as_raw_fd(),
                    self.dropped as libc::off_t,
                    (to - self.dropped) as libc::off_t,
                    libc::POSIX_FADV_DONTNEED,
                )
            };
            self.dropped = to;
        }
    }
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
        "{{\"wakeups\":{},\"interval_us\":{},\"late_ms\":{}}}",
        hist.len(),
        a.interval_us,
        percentiles_json(&hist)
    );
    Ok(())
}
