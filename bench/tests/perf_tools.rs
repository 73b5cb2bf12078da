//! The perf tools against the real broker: `produce` with Kafka's options (a payload file with
//! its delimiter, a producer properties file, `--producer-props` over both, `--print-metrics`,
//! `--payload-monotonic`, `--warmup-records`), `consume` with Kafka's output columns,
//! `--from-latest`, `--print-metrics` and `--include`, `e2e-latency`; each figure checked against what was
//! sent.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use millrace_e2e::Broker;
use serde_json::Value;

fn bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_millrace-bench"))
        .args(args)
        .stderr(Stdio::piped())
        .output()
        .expect("run millrace-bench")
}

fn ok(args: &[&str]) -> String {
    succeeded(bench(args), &format!("{args:?}"))
}

/// The standard output of a run (`what`, for the message) that must have succeeded.
fn succeeded(out: Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "millrace-bench {what}: {}\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The object of a `--json` run's last line (the tool writes it by hand: this also checks that
/// it is JSON).
fn parse(out: &str) -> Value {
    let line = out.trim().lines().last().unwrap_or_else(|| panic!("no output"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

/// The number at `path` ("a.b.c") in `v`.
fn num(v: &Value, path: &str) -> f64 {
    path.split('.').fold(v, |v, k| &v[k]).as_f64().unwrap_or_else(|| panic!("{path} in {v}"))
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_string_lossy().into_owned()
}

#[test]
fn perf_tools_take_kafkas_options_and_count_right() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(&dir.path().join("data"));
    let bs = broker.bootstrap();

    // Payloads "a", "bb", "" and "cccc" (the trailing empty piece is dropped, as Java's split
    // drops it). The file names an unreachable broker and values librdkafka refuses:
    // `--producer-props` and `--compression` must override them or nothing is sent.
    let payloads = write(dir.path(), "payloads", "a|bb||cccc|");
    let config = write(
        dir.path(),
        "producer.properties",
        "# as kafka-producer-perf-test takes it\nbootstrap.servers = 127.0.0.1:1\nacks: bogus\n\
         compression.type=bogus\nlinger.ms=1\n",
    );
    let out = ok(&[
        "produce",
        "--topic",
        "tools",
        "--num-records",
        "1000",
        "--throughput",
        "5000",
        "--payload-file",
        &payloads,
        "--payload-delimiter",
        "|",
        "--producer.config",
        &config,
        "--compression",
        "none",
        "--producer-props",
        &format!("bootstrap.servers={bs}"),
        "acks=all",
    ]);
    assert!(out.contains("Number of messages read: 4"), "{out}");
    let last = out.lines().last().unwrap();
    assert!(last.starts_with("1000 records sent, "), "{out}");
    assert!(last.ends_with("ms 99.9th."), "{out}");

    // librdkafka's own view of a run: a round trip per request, every record's queue time,
    // batches that add up to the records sent.
    let json = ok(&[
        "produce",
        "--bootstrap-server",
        &bs,
        "--topic",
        "metrics",
        "--num-records",
        "2000",
        "--record-size",
        "100",
        "--throughput",
        "2000",
        "--print-metrics",
        "--json",
    ]);
    let v = parse(&json);
    assert!(num(&v, "client.rtt_ms.count") > 0.0, "{v}");
    let in_batches = num(&v, "client.batches") * num(&v, "client.batch_records_avg");
    assert!((in_batches - 2000.0).abs() < 200.0, "{v}");
    assert_eq!(num(&v, "client.int_latency_ms.count"), 2000.0, "{v}");

    // Kafka's consumer columns (MB = 2^20 bytes); the 1000 records carry the four payloads in
    // turn.
    let bytes: u64 = (0..1000u64).map(|i| [1, 2, 0, 4][(i % 4) as usize]).sum();
    let out = ok(&["consume", "--bootstrap-server", &bs, "--topic", "tools", "--messages", "1000"]);
    let mut lines = out.lines();
    assert_eq!(
        lines.next().unwrap(),
        "start.time, end.time, data.consumed.in.MB, MB.sec, data.consumed.in.nMsg, nMsg.sec, \
         rebalance.time.ms, fetch.time.ms, fetch.MB.sec, fetch.nMsg.sec, time.to.first.record.ms"
    );
    let cols: Vec<&str> = lines.next().unwrap().split(", ").collect();
    assert_eq!(cols.len(), 11, "{out}");
    assert_eq!(cols[4], "1000", "{out}");
    assert_eq!(cols[2], format!("{:.4}", bytes as f64 / f64::from(1 << 20)), "{out}");

    // Per-interval lines in Kafka's columns; a properties file under Kafka 4.2's option name,
    // whose broker address `--bootstrap-server` overrides, as in Kafka's tool.
    let config = write(dir.path(), "consumer.properties", "bootstrap.servers=127.0.0.1:1\n");
    let out = ok(&[
        "consume",
        "--bootstrap-server",
        &bs,
        "--command-config",
        &config,
        "--topic",
        "tools",
        "--num-records",
        "1000",
        "--show-detailed-stats",
        "--reporting-interval",
        "1",
        "--date-format",
        "yyyy",
        "--hide-header",
    ]);
    let lines: Vec<&str> = out.lines().collect();
    assert!(!lines.is_empty(), "a record arrives more than 1 ms after the start: {out}");
    for l in &lines {
        let cols: Vec<&str> = l.split(", ").collect();
        assert_eq!(cols.len(), 10, "{out}");
        assert!(cols[0].len() == 4 && cols[0].starts_with("20"), "{out}");
        assert_eq!(cols[1], "0", "{out}");
    }
    let last: Vec<&str> = lines.last().unwrap().split(", ").collect();
    assert!(last[4].parse::<u64>().unwrap() <= 1000, "{out}");

    let json = ok(&[
        "consume",
        "--bootstrap-server",
        &bs,
        "--topic",
        "tools",
        "--num-records",
        "1000",
        "--fetch-size",
        "4096",
        "--json",
    ]);
    let v = parse(&json);
    assert_eq!(num(&v, "records"), 1000.0);
    assert_eq!(num(&v, "mb"), (bytes as f64 / 1e6 * 1000.0).round() / 1000.0);

    // --from-latest sees only what is produced after it started: 100-byte records, produced 50
    // at a time until it has its 50 (however long it takes to find the end).
    let mut late = Command::new(env!("CARGO_BIN_EXE_millrace-bench"))
        .args(["consume", "--bootstrap-server", &bs, "--topic", "tools", "--num-records", "50"])
        .args(["--from-latest", "--timeout", "30000", "--json"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut sent = 0;
    while late.try_wait().unwrap().is_none() {
        assert!(sent < 60 * 50, "the --from-latest consumer never finished");
        ok(&[
            "produce",
            "--bootstrap-server",
            &bs,
            "--topic",
            "tools",
            "--num-records",
            "50",
            "--record-size",
            "100",
            "--json",
        ]);
        sent += 50;
        std::thread::sleep(Duration::from_millis(500));
    }
    let json = succeeded(late.wait_with_output().unwrap(), "consume (started before the records)");
    let v = parse(&json);
    assert_eq!(num(&v, "records"), 50.0);
    assert_eq!(num(&v, "mb"), 0.005, "only the 50 new 100-byte records: {v}");

    // Too few records: Kafka's warning, the figures, and a failed exit.
    let all = 1000 + sent;
    let out = bench(&[
        "consume",
        "--bootstrap-server",
        &bs,
        "--topic",
        "tools",
        "--messages",
        &(all + 1).to_string(),
        "--timeout",
        "4000",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(text.contains("WARNING: Exiting before consuming the expected number of records"));
    let cols: Vec<&str> = text.lines().last().unwrap().split(", ").collect();
    assert_eq!(cols[4], all.to_string(), "every record counted: {text}");

    let json = ok(&[
        "e2e-latency",
        "--bootstrap-server",
        &bs,
        "--topic",
        "e2e",
        "--rate",
        "200",
        "--seconds",
        "1",
        "--json",
    ]);
    let v = parse(&json);
    assert_eq!(num(&v, "records"), 200.0);
    assert!(num(&v, "latency_ms.p99") >= num(&v, "latency_ms.p50"));

    broker.stop();
}

/// Kafka's `--payload-monotonic` (each value its record's number) and `--warmup-records` (a
/// second summary line for the records after the warm-up), read back with a plain consumer;
/// `consume --print-metrics` and `--include`.
#[test]
fn produce_numbers_its_records_and_reports_the_steady_state() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;

    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(&dir.path().join("data"));
    let bs = broker.bootstrap();
    let produce = |topic: &str, extra: &[&str]| {
        let mut args = vec!["produce", "--bootstrap-server", &bs, "--topic", topic];
        args.extend_from_slice(&["--num-records", "3000", "--throughput", "20000"]);
        args.extend_from_slice(extra);
        bench(&args)
    };

    let out = produce("numbers", &["--payload-monotonic", "--warmup-records", "1000"]);
    let text = succeeded(out, "produce numbers");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "Warmup first 1000 records. Steady state results will print after the complete test summary."
    );
    let (all, steady) = (lines[lines.len() - 2], lines[lines.len() - 1]);
    assert!(all.starts_with("3000 records sent, ") && all.ends_with("ms 99.9th."), "{text}");
    assert!(steady.starts_with("2000 steady state records sent, "), "{text}");
    assert!(steady.ends_with("ms 99.9th."), "{text}");

    // Every value is its record's number, each once (10×1 + 90×2 + 900×3 + 2000×4 bytes).
    let c: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &bs)
        .set("group.id", "unused")
        // Nothing to commit at close (which would wait for a group coordinator).
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let md = c.fetch_metadata(Some("numbers"), Duration::from_secs(10)).unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in md.topics()[0].partitions() {
        tpl.add_partition_offset("numbers", p.id(), rdkafka::Offset::Beginning).unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut values = std::collections::BTreeSet::new();
    let until = std::time::Instant::now() + Duration::from_secs(30);
    while values.len() < 3000 && std::time::Instant::now() < until {
        if let Some(m) = c.poll(Duration::from_millis(100)) {
            let m = m.unwrap();
            let v = std::str::from_utf8(m.payload().unwrap()).unwrap();
            assert!(values.insert(v.parse::<u64>().unwrap()), "{v} twice");
        }
    }
    assert_eq!(values, (0..3000).collect(), "the values are the numbers 0..3000");

    // consume --print-metrics: librdkafka's view, its fetches' round trip, the batches it
    // fetched (all 3000 records, nothing after the run) and its lag.
    let json = ok(&[
        "consume",
        "--bootstrap-server",
        &bs,
        "--topic",
        "numbers",
        "--num-records",
        "3000",
        "--print-metrics",
        "--json",
    ]);
    let v = parse(&json);
    assert_eq!(num(&v, "records"), 3000.0, "{v}");
    assert_eq!(num(&v, "mb"), 0.011, "10,890 bytes of numbers: {v}");
    assert!(num(&v, "client.rtt_ms.count") > 0.0, "{v}");
    let fetched = num(&v, "client.batches") * num(&v, "client.batch_records_avg");
    assert!((fetched - 3000.0).abs() < 150.0, "{v}");
    let lag = num(&v, "client.consumer_lag_max");
    assert!((0.0..=3000.0).contains(&lag), "{v}");

    // The same in --json: the steady state is its own object.
    let out =
        produce("numbers-json", &["--record-size", "100", "--warmup-records", "500", "--json"]);
    let json = succeeded(out, "produce numbers-json");
    let v = parse(&json);
    assert_eq!(num(&v, "records"), 3000.0, "{v}");
    assert_eq!(num(&v, "steady_state.records"), 2500.0, "{v}");
    assert!(num(&v, "steady_state.mb_per_sec") > 0.0, "{v}");
    assert!(num(&v, "steady_state.latency_ms.p99") > 0.0, "{v}");
    // Timed from the first record after the warm-up, which at 20,000 records/s cannot leave
    // before 25 ms into the run.
    let warm_up = num(&v, "seconds") - num(&v, "steady_state.seconds");
    assert!(warm_up >= 0.024, "{v}");

    // consume --include: every topic whose whole name the pattern matches (both 3000-record
    // topics), none for a pattern matching only part of a name.
    let include = |pattern: &str, extra: &[&str]| {
        let args = ["consume", "--bootstrap-server", &bs, "--include", pattern, "--json"];
        bench(&[&args[..], extra].concat())
    };
    let out = succeeded(include("numbers.*", &["--num-records", "6000"]), "consume --include");
    assert_eq!(num(&parse(&out), "records"), 6000.0);
    let out = include("number", &["--num-records", "1", "--timeout", "1000"]);
    assert!(!out.status.success());
    assert_eq!(num(&parse(&String::from_utf8_lossy(&out.stdout)), "records"), 0.0);
    let out = include("numbers(", &["--num-records", "1"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--include"), "a bad pattern is named");
    let out = include("numbers", &["--num-records", "1", "--topic", "numbers"]);
    assert_eq!(out.status.code(), Some(2), "--topic and --include together");

    // Exactly one payload option (clap's usage error); a warm-up shorter than the run.
    for bad in [&["--payload-monotonic", "--record-size", "10"][..], &[][..]] {
        let out = produce("refused", bad);
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
    }
    let out = produce("refused", &["--record-size", "10", "--warmup-records", "3000"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--warmup-records must be less than --num-records"), "{err}");

    broker.stop();
}

/// `baseline-disk --rate-mb`, the report's ideal writer: requests arrive at the rate asked for,
/// every one is written (the file's bytes and the request count match), and a request's latency
/// is at least a sync's while its records' spread over the interval before it.
#[test]
fn paced_disk_baseline_keeps_the_rate_and_counts_every_request() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path().to_str().expect("utf-8 path");
    // 2 MB in requests of 64 KiB at 20 MB/s: 31 requests, one every 3.3 ms, ≈ 0.1 s.
    let out = ok(&[
        "baseline-disk",
        "--dir",
        d,
        "--bytes",
        "2000000",
        "--chunk",
        "65536",
        "--fsync-every-chunk",
        "--rate-mb",
        "20",
        "--record-size",
        "1024",
    ]);
    let v = parse(&out);
    assert_eq!(num(&v, "requests"), 31.0, "{v}");
    let writes = num(&v, "writes");
    assert!((1.0..=31.0).contains(&writes), "{v}");
    assert!((num(&v, "interval_ms") - 3.277).abs() < 0.01, "{v}");
    // Paced, not as fast as the disk goes: 31 × 64 KiB at 20 MB/s take ≈ 0.1 s.
    let mb_per_sec = num(&v, "mb_per_sec");
    assert!(mb_per_sec > 5.0 && mb_per_sec < 21.0, "{v}");
    // A record waited at least part of the linger on top of its request's latency.
    assert!(num(&v, "record_latency_ms.p50") > num(&v, "request_latency_ms.p50"), "{v}");
    // Nothing is left behind in the directory.
    assert_eq!(std::fs::read_dir(dir.path()).expect("read dir").count(), 0);
    // Refused without a sync per request, or with a rate that is not positive.
    for bad in [&["--rate-mb", "20"][..], &["--rate-mb", "0", "--fsync-every-chunk"][..]] {
        let out = bench(&[&["baseline-disk", "--dir", d, "--bytes", "65536"][..], bad].concat());
        assert!(!out.status.success(), "{bad:?} accepted");
    }
}
