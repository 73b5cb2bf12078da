//! Broker configuration: `millrace serve` flags, each with an environment variable and a
//! default, named after Kafka's broker configs where one exists.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;
use millrace_storage::{DirectIo, LogConfig};

/// `millrace serve` options.
#[derive(Debug, Clone, Args)]
pub(crate) struct ServeArgs {
    /// Address to accept Kafka clients on (`listeners`).
    #[arg(long, env = "MILLRACE_LISTEN", default_value = "127.0.0.1:9092")]
    pub(crate) listen: SocketAddr,
    /// `host:port` clients are told to connect to (`advertised.listeners`); defaults to --listen.
    #[arg(long, env = "MILLRACE_ADVERTISED_LISTENER")]
    pub(crate) advertised_listener: Option<String>,
    /// Directory holding the partition logs and topic metadata (`log.dirs`).
    #[arg(long, env = "MILLRACE_DATA_DIR", default_value = "millrace-data")]
    pub(crate) data_dir: PathBuf,
    /// This broker's id (`node.id`).
    #[arg(long, env = "MILLRACE_NODE_ID", default_value_t = 1)]
    pub(crate) node_id: i32,
    /// Create a topic when a client first asks for its metadata (`auto.create.topics.enable`).
    #[arg(long, env = "MILLRACE_AUTO_CREATE_TOPICS_ENABLE", default_value_t = true, action = clap::ArgAction::Set)]
    pub(crate) auto_create_topics_enable: bool,
    /// Partitions of an auto-created topic, or of a CreateTopics asking for -1 (`num.partitions`).
    #[arg(long, env = "MILLRACE_NUM_PARTITIONS", default_value_t = 1)]
    pub(crate) num_partitions: i32,
    /// Largest request a client may send (`socket.request.max.bytes`).
    #[arg(long, env = "MILLRACE_SOCKET_REQUEST_MAX_BYTES", default_value_t = 104_857_600)]
    pub(crate) socket_request_max_bytes: usize,
    /// Connections served at once (`max.connections`); beyond it new ones wait in the listen
    /// backlog, unaccepted, until one closes (as Kafka's acceptor does).
    #[arg(long, env = "MILLRACE_MAX_CONNECTIONS", default_value_t = i32::MAX as usize)]
    pub(crate) max_connections: usize,
    /// Threads serving the client connections: reading, decoding, validating and appending
    /// requests, writing the answers (Kafka's `num.network.threads` and `num.io.threads` in
    /// one pool; each log directory's writes and fsyncs have a thread of their own). Default:
    /// one fewer than the CPUs, at least 1, which leaves room on a core for the log's I/O
    /// thread (docs/design/protocol.md, "Decisions"; tokio's `TOKIO_WORKER_THREADS` is not
    /// read). At most 1024.
    #[arg(long, env = "MILLRACE_NUM_NETWORK_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub(crate) num_network_threads: Option<u16>,
    /// Requests a connection may have in progress before reading pauses.
    #[arg(long, env = "MILLRACE_REQUESTS_IN_FLIGHT_MAX", default_value_t = 64)]
    pub(crate) requests_in_flight_max: usize,
    /// Default `segment.bytes` of new topics (`log.segment.bytes`).
    #[arg(long, env = "MILLRACE_LOG_SEGMENT_BYTES", default_value_t = 1 << 30)]
    pub(crate) log_segment_bytes: u64,
    /// Default `retention.ms` (`log.retention.ms`); -1 keeps forever.
    #[arg(long, env = "MILLRACE_LOG_RETENTION_MS", default_value_t = 7 * 24 * 3600 * 1000)]
    pub(crate) log_retention_ms: i64,
    /// Default `retention.bytes` (`log.retention.bytes`); -1 for no limit.
    #[arg(long, env = "MILLRACE_LOG_RETENTION_BYTES", default_value_t = -1)]
    pub(crate) log_retention_bytes: i64,
    /// Default `max.message.bytes` (`message.max.bytes`).
    #[arg(long, env = "MILLRACE_MESSAGE_MAX_BYTES", default_value_t = 1_048_588)]
    pub(crate) message_max_bytes: usize,
    /// Keep at most this many bytes of each segment's newest data in the page cache, dropping
    /// older pages as appends go on; -1 (the default) leaves the page cache to the kernel, as
    /// Kafka does. Consumers further behind read from the disk. Millrace's own setting, for
    /// hosts where new page-cache memory is expensive (docs/design/storage.md).
    #[arg(long, env = "MILLRACE_LOG_PAGE_CACHE_WINDOW_BYTES", default_value_t = -1,
          allow_negative_numbers = true, value_parser = clap::value_parser!(i64).range(-1..))]
    pub(crate) log_page_cache_window_bytes: i64,
    /// Write active segments with direct I/O (`O_DIRECT`), bypassing the page cache, and serve
    /// each partition's newest `--log-direct-io-cache-bytes` to consumers from memory.
    /// Consumers further behind read from the disk. Millrace's own setting, for hosts where
    /// page-cache memory is expensive (docs/design/storage.md, "Direct I/O").
    #[arg(long, env = "MILLRACE_LOG_DIRECT_IO", default_value_t = false)]
    pub(crate) log_direct_io: bool,
    /// With `--log-direct-io`: bytes of each partition's newest data kept in memory.
    #[arg(long, env = "MILLRACE_LOG_DIRECT_IO_CACHE_BYTES", default_value_t = 8 << 20)]
    pub(crate) log_direct_io_cache_bytes: u64,
    /// With `--log-direct-io`: bytes of memory all partitions together keep for it (the
    /// partitions appended to least recently let go first; each partition's share is at most
    /// this).
    #[arg(
        long,
        env = "MILLRACE_LOG_DIRECT_IO_MEMORY_BYTES",
        default_value_t = DirectIo::DEFAULT_MEMORY_BYTES,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub(crate) log_direct_io_memory_bytes: u64,
    /// How often retention runs (`log.retention.check.interval.ms`).
    #[arg(long, env = "MILLRACE_LOG_RETENTION_CHECK_INTERVAL_MS", default_value_t = 300_000)]
    pub(crate) log_retention_check_interval_ms: u64,
}

impl ServeArgs {
    /// The log config a topic without overrides gets.
    pub(crate) fn log_defaults(&self) -> LogConfig {
        LogConfig {
            segment_bytes: self.log_segment_bytes,
            retention_ms: self.log_retention_ms,
            retention_bytes: self.log_retention_bytes,
            max_message_bytes: self.message_max_bytes,
            ..LogConfig::default()
        }
    }

    /// `--num-network-threads`, or one fewer than the CPUs this process may run on (its
    /// affinity and CPU quota, read now), at least 1.
    pub(crate) fn network_threads(&self) -> usize {
        match self.num_network_threads {
            Some(n) => usize::from(n),
            None => std::thread::available_parallelism().map_or(1, |n| n.get()).max(2) - 1,
        }
    }

    /// `(host, port)` advertised to clients.
    pub(crate) fn advertised(&self) -> (String, i32) {
        if let Some(a) = &self.advertised_listener {
            if let Some((h, p)) = a.rsplit_once(':') {
                if let Ok(p) = p.parse() {
                    return (h.trim_start_matches('[').trim_end_matches(']').to_string(), p);
                }
            }
        }
        (self.listen.ip().to_string(), i32::from(self.listen.port()))
    }
}
