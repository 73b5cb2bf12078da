//! `millrace topic|produce|consume`: tools for people, speaking the Kafka protocol to any
//! Kafka-compatible broker (`--bootstrap-server`, default 127.0.0.1:9092).
//!
//! A small client on the `kafka-protocol` crate: ApiVersions first, then every request at the
//! newest version both sides speak. `produce` sends uncompressed batches of lines from stdin;
//! `consume` prints records (any codec) like kcat does (`-f`-style format with %t %p %o %k %s %T %h).

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, Write};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use clap::{Args, Subcommand};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, Request, StrBytes};
use millrace_protocol::records::OwnedRecord;
use millrace_storage::batch::{self, BatchBuilder, BatchHeader, Record};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::handlers::{sb, topic_name};

type Error = Box<dyn std::error::Error + Send + Sync>;
type Result<T> = std::result::Result<T, Error>;

/// Connection options shared by the tools.
#[derive(Debug, Clone, Args)]
pub(crate) struct Connect {
    /// `host:port` of a broker.
    #[arg(long, short = 'b', env = "MILLRACE_BOOTSTRAP_SERVER", default_value = "127.0.0.1:9092")]
    bootstrap_server: String,
}

#[derive(Debug, Subcommand)]
pub(crate) enum TopicCommand {
    /// Create a topic.
    Create {
        name: String,
        #[arg(long, default_value_t = -1)]
        partitions: i32,
        /// A topic config `key=value` (repeatable).
        #[arg(long = "config", value_name = "KEY=VALUE")]
        configs: Vec<String>,
    },
    /// List topics.
    List,
    /// Show partitions, offsets and configs of a topic.
    Describe { name: String },
    /// Delete a topic.
    Delete { name: String },
    /// Set (`--set k=v`) or remove (`--delete k`) topic configs.
    AlterConfig {
        name: String,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        #[arg(long = "delete", value_name = "KEY")]
        delete: Vec<String>,
    },
}

#[derive(Debug, Args)]
pub(crate) struct ProduceArgs {
    topic: String,
    #[arg(long, short = 'p', default_value_t = 0)]
    partition: i32,
    /// Split each line into key and value at the first occurrence of this string.
    #[arg(long, short = 'K')]
    key_separator: Option<String>,
    /// -1 (all), 0 or 1.
    #[arg(long, default_value_t = -1)]
    acks: i16,
    /// Records per batch.
    #[arg(long, default_value_t = 500)]
    batch_records: usize,
}

#[derive(Debug, Args)]
pub(crate) struct ConsumeArgs {
    topic: String,
    #[arg(long, short = 'p', default_value_t = 0)]
    partition: i32,
    /// `beginning`, `end`, an offset, or `-N` for N records before the end.
    #[arg(long, short = 'o', default_value = "beginning", allow_hyphen_values = true)]
    offset: String,
    /// Exit at the end of the partition instead of waiting for more.
    #[arg(long, short = 'e')]
    exit: bool,
    /// Stop after this many records.
    #[arg(long, short = 'c')]
    count: Option<u64>,
    /// Output format: %t topic, %p partition, %o offset, %k key, %s value, %T timestamp,
    /// %h headers (k=v,...), \n \t.
    #[arg(long, short = 'f', default_value = "%s\\n")]
    format: String,
}

/// A connection to one broker.
struct Client {
    stream: TcpStream,
    correlation_id: i32,
    versions: HashMap<i16, (i16, i16)>,
}

impl Client {
    async fn connect(c: &Connect) -> Result<Client> {
        let stream = TcpStream::connect(&c.bootstrap_server)
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", c.bootstrap_server))?;
        stream.set_nodelay(true)?;
        let mut client = Client { stream, correlation_id: 0, versions: HashMap::new() };
        client.versions.insert(ApiKey::ApiVersions as i16, (0, 3));
        let r: ApiVersionsResponse = client
            .send(
                ApiVersionsRequest::default()
                    .with_client_software_name(StrBytes::from_static_str("millrace-cli"))
                    .with_client_software_version(StrBytes::from_static_str(env!(
                        "CARGO_PKG_VERSION"
                    ))),
            )
            .await?;
        if r.error_code != 0 {
            return Err(format!("ApiVersions failed with error {}", r.error_code).into());
        }
        for k in r.api_keys {
            client.versions.insert(k.api_key, (k.min_version, k.max_version));
        }
        Ok(client)
    }

    fn version<R: Request>(&self) -> Result<i16> {
        let ours = ApiKey::try_from(R::KEY).map_err(|_| "unknown key")?.valid_versions();
        let (min, max) = *self
            .versions
            .get(&R::KEY)
            .ok_or_else(|| format!("the broker does not support {:?}", ApiKey::try_from(R::KEY)))?;
        let v = max.min(ours.max);
        if v < min.max(ours.min) {
            return Err(format!("no common version for {:?}", ApiKey::try_from(R::KEY)).into());
        }
        Ok(v)
    }

    async fn send<R: Request>(&mut self, req: R) -> Result<R::Response> {
        let version = self.version::<R>()?;
        self.correlation_id += 1;
        let key = ApiKey::try_from(R::KEY).map_err(|_| "unknown key")?;
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation_id)
            .with_client_id(Some(StrBytes::from_static_str("millrace-cli")));
        // Length prefix first as a placeholder, patched once the frame is encoded.
        let mut frame = BytesMut::new();
        frame.put_i32(0);
        header.encode(&mut frame, key.request_header_version(version))?;
        req.encode(&mut frame, version)?;
        let len = (frame.len() - 4) as i32;
        frame[..4].copy_from_slice(&len.to_be_bytes());
        self.stream.write_all(&frame).await?;
        let len = self.stream.read_i32().await?;
        if !(0..=1 << 30).contains(&len) {
            return Err(format!("bad response length {len}").into());
        }
        let mut buf = vec![0u8; len as usize];
        self.stream.read_exact(&mut buf).await?;
        let mut buf = Bytes::from(buf);
        let rh = ResponseHeader::decode(
            &mut buf,
            millrace_protocol::response_header_version(key, version),
        )?;
        if rh.correlation_id != self.correlation_id {
            return Err("response out of order".into());
        }
        Ok(R::Response::decode(&mut buf, version)?)
    }
}

fn key_value(s: &str) -> Result<(String, String)> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}").into())
}

fn check(code: i16, message: Option<&StrBytes>, what: &str) -> Result<()> {
    if code == 0 {
        return Ok(());
    }
    let name = kafka_protocol::error::ParseResponseErrorCode::err(code)
        .map(|e| format!("{e:?}"))
        .unwrap_or_default();
    let msg = message.map(|m| format!(": {}", m.as_str())).unwrap_or_default();
    Err(format!("{what} failed with error {code} {name}{msg}").into())
}

pub(crate) async fn topic(connect: Connect, cmd: TopicCommand) -> Result<()> {
    let mut c = Client::connect(&connect).await?;
    match cmd {
        TopicCommand::Create { name, partitions, configs } => {
            let mut t = create_topics_request::CreatableTopic::default();
            t.name = topic_name(&name);
            t.num_partitions = partitions;
            t.replication_factor = -1;
            for kv in configs {
                let (k, v) = key_value(&kv)?;
                let mut cfg = create_topics_request::CreatableTopicConfig::default();
                cfg.name = sb(&k);
                cfg.value = Some(sb(&v));
                t.configs.push(cfg);
            }
            let mut req = CreateTopicsRequest::default();
            req.topics = vec![t];
            req.timeout_ms = 30_000;
            let r = c.send(req).await?;
            for t in r.topics {
                check(t.error_code, t.error_message.as_ref(), "create topic")?;
                println!("created topic {} ({} partitions)", t.name.0.as_str(), t.num_partitions);
            }
        }
        TopicCommand::List => {
            let r = c.send(MetadataRequest::default().with_topics(None)).await?;
            let mut names: Vec<String> =
                r.topics.iter().filter_map(|t| t.name.as_ref().map(|n| n.0.to_string())).collect();
            names.sort();
            for n in names {
                println!("{n}");
            }
        }
        TopicCommand::Describe { name } => {
            let mut mt = metadata_request::MetadataRequestTopic::default();
            mt.name = Some(topic_name(&name));
            let r = c
                .send(
                    MetadataRequest::default()
                        .with_topics(Some(vec![mt]))
                        .with_allow_auto_topic_creation(false),
                )
                .await?;
            let t = r.topics.into_iter().next().ok_or("empty metadata response")?;
            check(t.error_code, None, "describe topic")?;
            println!("topic {name}  id {}  partitions {}", t.topic_id, t.partitions.len());
            let mut lo = list_offsets_request::ListOffsetsTopic::default();
            lo.name = topic_name(&name);
            for p in &t.partitions {
                for ts in [-2, -1] {
                    let mut lp = list_offsets_request::ListOffsetsPartition::default();
                    lp.partition_index = p.partition_index;
                    lp.timestamp = ts;
                    lo.partitions.push(lp);
                }
            }
            let r = c
                .send(
                    ListOffsetsRequest::default()
                        .with_replica_id(BrokerId(-1))
                        .with_topics(vec![lo]),
                )
                .await?;
            let mut offsets: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
            for t in r.topics {
                for p in t.partitions {
                    offsets.entry(p.partition_index).or_default().push(p.offset);
                }
            }
            for (p, o) in offsets {
                println!(
                    "  partition {p}  leader {}  log start {}  end {}",
                    r_leader(&t.partitions, p),
                    o[0],
                    o.get(1).copied().unwrap_or(-1)
                );
            }
            let mut res = describe_configs_request::DescribeConfigsResource::default();
            res.resource_type = 2;
            res.resource_name = sb(&name);
            res.configuration_keys = None;
            let r = c.send(DescribeConfigsRequest::default().with_resources(vec![res])).await?;
            for res in r.results {
                check(res.error_code, res.error_message.as_ref(), "describe configs")?;
                println!("  configs:");
                for cfg in res.configs {
                    let source = match cfg.config_source {
                        1 => "topic override",
                        5 => "default",
                        4 => "broker",
                        _ => "",
                    };
                    println!(
                        "    {}={}  ({source})",
                        cfg.name.as_str(),
                        cfg.value.as_ref().map(|v| v.as_str()).unwrap_or("null")
                    );
                }
            }
        }
        TopicCommand::Delete { name } => {
            let mut st = delete_topics_request::DeleteTopicState::default();
            st.name = Some(topic_name(&name));
            let req = DeleteTopicsRequest::default()
                .with_topics(vec![st])
                .with_topic_names(vec![topic_name(&name)])
                .with_timeout_ms(30_000);
            // Versions before 6 carry names only, 6+ carry `topics`; send what fits.
            let req = if c.version::<DeleteTopicsRequest>()? >= 6 {
                req.with_topic_names(vec![])
            } else {
                req.with_topics(vec![])
            };
            let r = c.send(req).await?;
            for t in r.responses {
                check(t.error_code, t.error_message.as_ref(), "delete topic")?;
            }
            println!("deleted topic {name}");
        }
        TopicCommand::AlterConfig { name, set, delete } => {
            let mut res = incremental_alter_configs_request::AlterConfigsResource::default();
            res.resource_type = 2;
            res.resource_name = sb(&name);
            for kv in set {
                let (k, v) = key_value(&kv)?;
                let mut a = incremental_alter_configs_request::AlterableConfig::default();
                a.name = sb(&k);
                a.config_operation = 0;
                a.value = Some(sb(&v));
                res.configs.push(a);
            }
            for k in delete {
                let mut a = incremental_alter_configs_request::AlterableConfig::default();
                a.name = sb(&k);
                a.config_operation = 1;
                res.configs.push(a);
            }
            let r =
                c.send(IncrementalAlterConfigsRequest::default().with_resources(vec![res])).await?;
            for r in r.responses {
                check(r.error_code, r.error_message.as_ref(), "alter configs")?;
            }
            println!("altered configs of {name}");
        }
    }
    Ok(())
}

fn r_leader(parts: &[metadata_response::MetadataResponsePartition], p: i32) -> i32 {
    parts.iter().find(|x| x.partition_index == p).map_or(-1, |x| x.leader_id.0)
}

pub(crate) async fn produce(connect: Connect, args: ProduceArgs) -> Result<()> {
    let mut c = Client::connect(&connect).await?;
    let mut total = 0u64;
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        let mut b = BatchBuilder::new();
        for line in lines.by_ref() {
            let line = line?;
            let (key, value) = match &args.key_separator {
                Some(sep) => match line.split_once(sep.as_str()) {
                    Some((k, v)) => (Some(k.as_bytes().to_vec()), v.as_bytes().to_vec()),
                    None => (None, line.as_bytes().to_vec()),
                },
                None => (None, line.into_bytes()),
            };
            b.push(Record {
                timestamp: millrace_storage::now_ms(),
                key,
                value: Some(value),
                headers: vec![],
            });
            if b.len() >= args.batch_records.max(1) {
                break;
            }
        }
        if b.is_empty() {
            break;
        }
        let n = b.len() as u64;
        let mut pd = produce_request::PartitionProduceData::default();
        pd.index = args.partition;
        pd.records = Some(Bytes::from(b.build()));
        let mut td = produce_request::TopicProduceData::default();
        td.name = topic_name(&args.topic);
        td.partition_data = vec![pd];
        let req = ProduceRequest::default()
            .with_acks(args.acks)
            .with_timeout_ms(30_000)
            .with_topic_data(vec![td]);
        if args.acks == 0 {
            return Err("acks=0 is not supported by this tool (it waits for answers)".into());
        }
        // Produce v13 addresses topics by id; stay below it so names work everywhere.
        c.versions.entry(ApiKey::Produce as i16).and_modify(|v| v.1 = v.1.min(12));
        let r = c.send(req).await?;
        for t in r.responses {
            for p in t.partition_responses {
                check(p.error_code, p.error_message.as_ref(), "produce")?;
            }
        }
        total += n;
    }
    eprintln!("produced {total} records to {} [{}]", args.topic, args.partition);
    Ok(())
}

pub(crate) async fn consume(connect: Connect, args: ConsumeArgs) -> Result<()> {
    let mut c = Client::connect(&connect).await?;
    c.versions.entry(ApiKey::Fetch as i16).and_modify(|v| v.1 = v.1.min(12));
    let list = |ts: i64| {
        let mut lp = list_offsets_request::ListOffsetsPartition::default();
        lp.partition_index = args.partition;
        lp.timestamp = ts;
        let mut lo = list_offsets_request::ListOffsetsTopic::default();
        lo.name = topic_name(&args.topic);
        lo.partitions = vec![lp];
        ListOffsetsRequest::default().with_replica_id(BrokerId(-1)).with_topics(vec![lo])
    };
    let offset_of = |r: ListOffsetsResponse| -> Result<i64> {
        let p =
            r.topics.into_iter().flat_map(|t| t.partitions).next().ok_or("empty ListOffsets")?;
        check(p.error_code, None, "list offsets")?;
        Ok(p.offset)
    };
    let end = offset_of(c.send(list(-1)).await?)?;
    let mut offset = match args.offset.as_str() {
        "beginning" => offset_of(c.send(list(-2)).await?)?,
        "end" => end,
        s => match s.parse::<i64>()? {
            n if n < 0 => (end + n).max(offset_of(c.send(list(-2)).await?)?),
            n => n,
        },
    };
    let mut printed = 0u64;
    let out = std::io::stdout();
    let mut out = std::io::BufWriter::new(out.lock());
    loop {
        let mut fp = fetch_request::FetchPartition::default();
        fp.partition = args.partition;
        fp.fetch_offset = offset;
        fp.partition_max_bytes = 1 << 20;
        let mut ft = fetch_request::FetchTopic::default();
        ft.topic = topic_name(&args.topic);
        ft.partitions = vec![fp];
        let req = FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(if args.exit { 0 } else { 500 })
            .with_min_bytes(1)
            .with_max_bytes(16 << 20)
            .with_topics(vec![ft]);
        let r = c.send(req).await?;
        let p = r.responses.into_iter().flat_map(|t| t.partitions).next().ok_or("empty Fetch")?;
        check(p.error_code, None, "fetch")?;
        let mut buf = p.records.unwrap_or_default();
        let mut got_any = false;
        while buf.remaining() >= batch::BATCH_HEADER_LEN {
            let Some(h) = BatchHeader::parse(&buf) else { break };
            let Some(len) = h.total_len().filter(|&l| l <= buf.len()) else { break };
            let one = buf.split_to(len);
            let (_, recs) = millrace_protocol::records::decode_records(&one)
                .map_err(|e| format!("batch at offset {}: {e}", h.base_offset))?;
            for rec in &recs {
                if rec.offset < offset {
                    continue;
                }
                print_record(&mut out, &args, rec)?;
                offset = rec.offset + 1;
                got_any = true;
                printed += 1;
                if args.count.is_some_and(|n| printed >= n) {
                    out.flush()?;
                    return Ok(());
                }
            }
            offset = offset.max(h.last_offset() + 1);
        }
        out.flush()?;
        if !got_any && args.exit && offset >= p.high_watermark {
            eprintln!("reached end of {} [{}] at offset {offset}", args.topic, args.partition);
            return Ok(());
        }
    }
}

fn print_record(out: &mut impl Write, args: &ConsumeArgs, r: &OwnedRecord) -> Result<()> {
    let mut chars = args.format.chars().peekable();
    while let Some(ch) = chars.next() {
        match (ch, chars.peek().copied()) {
            ('%', Some(f)) => {
                chars.next();
                match f {
                    't' => out.write_all(args.topic.as_bytes())?,
                    'p' => write!(out, "{}", args.partition)?,
                    'o' => write!(out, "{}", r.offset)?,
                    'k' => out.write_all(r.key.as_deref().unwrap_or_default())?,
                    's' => out.write_all(r.value.as_deref().unwrap_or_default())?,
                    'T' => write!(out, "{}", r.timestamp)?,
                    'h' => {
                        for (i, (k, v)) in r.headers.iter().enumerate() {
                            if i > 0 {
                                out.write_all(b",")?;
                            }
                            out.write_all(k)?;
                            out.write_all(b"=")?;
                            out.write_all(v.as_deref().unwrap_or_default())?;
                        }
                    }
                    '%' => out.write_all(b"%")?,
                    other => write!(out, "%{other}")?,
                }
            }
            ('\\', Some('n')) => {
                chars.next();
                out.write_all(b"\n")?;
            }
            ('\\', Some('t')) => {
                chars.next();
                out.write_all(b"\t")?;
            }
            (c, _) => write!(out, "{c}")?,
        }
    }
    Ok(())
}
