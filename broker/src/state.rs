//! The broker's state: its topics, each with an id, configs and one [`Log`] per partition, and
//! the metadata file that makes them survive restarts.
//!
//! `<data-dir>/meta/topics.json` holds the cluster id and every topic's name, id, partition count
//! and config overrides. It is replaced atomically (temp file, fsync, rename, fsync dir) on every
//! change, before the change is acknowledged. Partition logs live in `<data-dir>/logs/`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use millrace_storage::{DirectIo, IoEngineChoice, Log, LogConfig, LogDir};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config::ServeArgs;
use crate::topic_config;

/// A topic.
#[derive(Debug)]
pub(crate) struct Topic {
    pub(crate) name: String,
    /// The name as the protocol crate holds it, shared by every response that names the topic
    /// (a clone costs no allocation, and holds no request's bytes).
    pub(crate) wire_name: kafka_protocol::messages::TopicName,
    pub(crate) id: Uuid,
    pub(crate) partitions: RwLock<Vec<Arc<Log>>>,
    pub(crate) configs: RwLock<BTreeMap<String, String>>,
}

impl Topic {
    pub(crate) fn partition(&self, index: i32) -> Option<Arc<Log>> {
        let p = self.partitions.read().unwrap_or_else(|e| e.into_inner());
        usize::try_from(index).ok().and_then(|i| p.get(i).cloned())
    }
    pub(crate) fn partition_count(&self) -> i32 {
        self.partitions.read().unwrap_or_else(|e| e.into_inner()).len() as i32
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct MetaFile {
    cluster_id: String,
    topics: Vec<TopicMeta>,
}

#[derive(Debug, Serialize, Deserialize)]
struct TopicMeta {
    name: String,
    id: Uuid,
    partitions: i32,
    configs: BTreeMap<String, String>,
}

/// Why a topic operation failed, with the Kafka error code to answer.
#[derive(Debug)]
pub(crate) struct TopicError {
    pub(crate) code: i16,
    pub(crate) message: String,
}

impl TopicError {
    pub(crate) fn new(code: i16, message: impl Into<String>) -> TopicError {
        TopicError { code, message: message.into() }
    }

    pub(crate) fn unknown_topic(name: &str) -> TopicError {
        TopicError::new(ec::UNKNOWN_TOPIC_OR_PARTITION, format!("unknown topic {name:?}"))
    }
}

/// Most partitions a topic may have.
const MAX_PARTITIONS: i32 = 100_000;

/// The topics, by name and by id (Produce and Fetch v13+ name topics by id).
#[derive(Debug, Default)]
struct Topics {
    by_name: HashMap<String, Arc<Topic>>,
    by_id: HashMap<Uuid, Arc<Topic>>,
}

impl Topics {
    fn insert(&mut self, topic: Arc<Topic>) {
        self.by_id.insert(topic.id, topic.clone());
        self.by_name.insert(topic.name.clone(), topic);
    }

    fn remove(&mut self, name: &str) -> Option<Arc<Topic>> {
        let topic = self.by_name.remove(name)?;
        self.by_id.remove(&topic.id);
        Some(topic)
    }
}

use millrace_protocol::error_code as ec;

/// The broker: config, topics, the log directory.
#[derive(Debug)]
pub(crate) struct Broker {
    pub(crate) args: ServeArgs,
    pub(crate) cluster_id: String,
    pub(crate) log_defaults: LogConfig,
    log_dir: LogDir,
    meta_path: PathBuf,
    topics: RwLock<Topics>,
    /// Serialises topic creation, deletion and changes (and their metadata writes).
    admin: tokio::sync::Mutex<()>,
    /// Becomes `true` when the broker starts shutting down (ends long polls early).
    pub(crate) shutdown: tokio::sync::watch::Sender<bool>,
}

/// Kafka's legal topic names: 1..=249 of `[a-zA-Z0-9._-]`, not `.` or `..`.
pub(crate) fn validate_topic_name(name: &str) -> Result<(), TopicError> {
    let legal = !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if legal {
        Ok(())
    } else {
        Err(TopicError::new(ec::INVALID_TOPIC_EXCEPTION, format!("invalid topic name {name:?}")))
    }
}

impl Broker {
    /// Opens the data directory: reads the topic metadata and opens (recovering) every log.
    pub(crate) fn open(args: ServeArgs) -> anyhow_free::Result<Broker> {
        std::fs::create_dir_all(args.data_dir.join("meta"))?;
        let log_dir = LogDir::open(args.data_dir.join("logs"), IoEngineChoice::from_env())?;
        log_dir.set_page_cache_window(u64::try_from(args.log_page_cache_window_bytes).ok());
        log_dir.set_direct_io(args.log_direct_io.then_some(DirectIo {
            cache_bytes: args.log_direct_io_cache_bytes,
            memory_bytes: args.log_direct_io_memory_bytes,
        }));
        let meta_path = args.data_dir.join("meta").join("topics.json");
        let meta: MetaFile = match std::fs::read(&meta_path) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| format!("{} is damaged: {e}", meta_path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                MetaFile { cluster_id: new_cluster_id(), topics: Vec::new() }
            }
            Err(e) => return Err(e.into()),
        };
        let log_defaults = args.log_defaults();
        log_defaults.validate()?;
        let mut topics = Topics::default();
        for t in &meta.topics {
            let config = topic_config::log_config(&log_defaults, &t.configs)?;
            let logs =
                open_logs(&log_dir, &t.name, 0..t.partitions, &config).map_err(|e| e.message)?;
            topics.insert(Arc::new(Topic {
                name: t.name.clone(),
                wire_name: crate::handlers::topic_name(&t.name),
                id: t.id,
                partitions: RwLock::new(logs),
                configs: RwLock::new(t.configs.clone()),
            }));
        }
        tracing::info!(
            data_dir = %args.data_dir.display(),
            topics = topics.by_name.len(),
            engine = ?log_dir.engine(),
            "opened data directory"
        );
        let broker = Broker {
            args,
            cluster_id: meta.cluster_id,
            log_defaults,
            log_dir,
            meta_path,
            topics: RwLock::new(topics),
            admin: tokio::sync::Mutex::new(()),
            shutdown: tokio::sync::watch::Sender::new(false),
        };
        broker.write_meta()?;
        Ok(broker)
    }

    pub(crate) fn node_id(&self) -> i32 {
        self.args.node_id
    }

    /// A topic's partition count as asked, with -1 meaning `num.partitions`.
    pub(crate) fn partitions_or_default(&self, partitions: i32) -> i32 {
        if partitions == -1 {
            self.args.num_partitions
        } else {
            partitions
        }
    }

    pub(crate) fn topic(&self, name: &str) -> Option<Arc<Topic>> {
        self.topics.read().unwrap_or_else(|e| e.into_inner()).by_name.get(name).cloned()
    }

    pub(crate) fn topic_by_id(&self, id: Uuid) -> Option<Arc<Topic>> {
        self.topics.read().unwrap_or_else(|e| e.into_inner()).by_id.get(&id).cloned()
    }

    /// All topics, sorted by name.
    pub(crate) fn topics(&self) -> Vec<Arc<Topic>> {
        let mut v: Vec<_> = self
            .topics
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .by_name
            .values()
            .cloned()
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Writes the topic metadata after a change, as a topic error if that fails.
    fn persist(&self) -> Result<(), TopicError> {
        self.write_meta().map_err(|e| TopicError::new(ec::KAFKA_STORAGE_ERROR, e.to_string()))
    }

    fn write_meta(&self) -> std::io::Result<()> {
        let topics = self.topics();
        let meta = MetaFile {
            cluster_id: self.cluster_id.clone(),
            topics: topics
                .iter()
                .map(|t| TopicMeta {
                    name: t.name.clone(),
                    id: t.id,
                    partitions: t.partition_count(),
                    configs: t.configs.read().unwrap_or_else(|e| e.into_inner()).clone(),
                })
                .collect(),
        };
        let bytes = serde_json::to_vec_pretty(&meta).map_err(std::io::Error::other)?;
        write_atomically(&self.meta_path, &bytes)
    }

    /// Creates a topic (or only checks that it could be, with `validate_only`).
    pub(crate) async fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        replication_factor: i16,
        configs: BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<Arc<Topic>, TopicError> {
        validate_topic_name(name)?;
        let partitions = self.partitions_or_default(partitions);
        if partitions < 1 {
            return Err(TopicError::new(
                ec::INVALID_PARTITIONS,
                "number of partitions must be at least 1",
            ));
        }
        if partitions > MAX_PARTITIONS {
            return Err(TopicError::new(ec::INVALID_PARTITIONS, "too many partitions"));
        }
        if replication_factor != -1 && replication_factor != 1 {
            return Err(TopicError::new(
                ec::INVALID_REPLICATION_FACTOR,
                format!(
                    "replication factor {replication_factor} is larger than the 1 available broker"
                ),
            ));
        }
        let config = topic_config::log_config(&self.log_defaults, &configs)
            .map_err(|e| TopicError::new(ec::INVALID_CONFIG, e))?;
        let _admin = self.admin.lock().await;
        if self.topic(name).is_some() {
            return Err(TopicError::new(
                ec::TOPIC_ALREADY_EXISTS,
                format!("topic {name:?} already exists"),
            ));
        }
        let id = Uuid::new_v4();
        let topic = Arc::new(Topic {
            name: name.to_string(),
            wire_name: crate::handlers::topic_name(name),
            id,
            partitions: RwLock::new(Vec::new()),
            configs: RwLock::new(configs),
        });
        if validate_only {
            return Ok(topic);
        }
        let logs = open_logs(&self.log_dir, name, 0..partitions, &config)?;
        *topic.partitions.write().unwrap_or_else(|e| e.into_inner()) = logs;
        self.topics.write().unwrap_or_else(|e| e.into_inner()).insert(topic.clone());
        self.persist()?;
        tracing::info!(topic = name, partitions, %id, "created topic");
        Ok(topic)
    }

    /// Deletes a topic and its data.
    pub(crate) async fn delete_topic(&self, name: &str) -> Result<(), TopicError> {
        let _admin = self.admin.lock().await;
        let Some(topic) = self.topics.write().unwrap_or_else(|e| e.into_inner()).remove(name)
        else {
            return Err(TopicError::unknown_topic(name));
        };
        self.persist()?;
        let logs =
            std::mem::take(&mut *topic.partitions.write().unwrap_or_else(|e| e.into_inner()));
        for log in logs {
            let dir = log.dir().to_owned();
            let _ = log.close();
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "could not remove a deleted partition");
            }
        }
        tracing::info!(topic = name, "deleted topic");
        Ok(())
    }

    /// Grows a topic to `count` partitions.
    pub(crate) async fn create_partitions(
        &self,
        name: &str,
        count: i32,
        validate_only: bool,
    ) -> Result<(), TopicError> {
        let _admin = self.admin.lock().await;
        let topic = self.topic(name).ok_or_else(|| TopicError::unknown_topic(name))?;
        let current = topic.partition_count();
        if count <= current {
            return Err(TopicError::new(
                ec::INVALID_PARTITIONS,
                format!(
                    "topic has {current} partitions; the new count must be larger, got {count}"
                ),
            ));
        }
        if count > MAX_PARTITIONS {
            return Err(TopicError::new(ec::INVALID_PARTITIONS, "too many partitions"));
        }
        if validate_only {
            return Ok(());
        }
        let config =
            self.topic_log_config(&topic).map_err(|e| TopicError::new(ec::INVALID_CONFIG, e))?;
        let logs = open_logs(&self.log_dir, name, current..count, &config)?;
        topic.partitions.write().unwrap_or_else(|e| e.into_inner()).extend(logs);
        self.persist()
    }

    pub(crate) fn topic_log_config(&self, topic: &Topic) -> Result<LogConfig, String> {
        topic_config::log_config(
            &self.log_defaults,
            &topic.configs.read().unwrap_or_else(|e| e.into_inner()),
        )
    }

    /// Edits a topic's config overrides: `edit` changes a copy of the current ones, which is
    /// validated, applied to every log and persisted. Read, edit and write happen under the
    /// admin lock, so concurrent edits of one topic (of different keys) all take effect.
    pub(crate) async fn alter_topic_configs(
        &self,
        name: &str,
        edit: impl FnOnce(&mut BTreeMap<String, String>) -> Result<(), TopicError>,
        validate_only: bool,
    ) -> Result<(), TopicError> {
        let _admin = self.admin.lock().await;
        // Looked up under the lock: a topic deleted (or deleted and created again) meanwhile is
        // not edited behind its successor's back.
        let topic = self.topic(name).ok_or_else(|| TopicError::unknown_topic(name))?;
        let mut configs = topic.configs.read().unwrap_or_else(|e| e.into_inner()).clone();
        edit(&mut configs)?;
        let config = topic_config::log_config(&self.log_defaults, &configs)
            .map_err(|e| TopicError::new(ec::INVALID_CONFIG, e))?;
        if validate_only {
            return Ok(());
        }
        for log in topic.partitions.read().unwrap_or_else(|e| e.into_inner()).iter() {
            log.set_config(config.clone())
                .map_err(|e| TopicError::new(ec::INVALID_CONFIG, e.to_string()))?;
        }
        *topic.configs.write().unwrap_or_else(|e| e.into_inner()) = configs;
        self.persist()
    }

    /// Every partition log, for retention and shutdown.
    pub(crate) fn all_logs(&self) -> Vec<Arc<Log>> {
        self.topics()
            .iter()
            .flat_map(|t| t.partitions.read().unwrap_or_else(|e| e.into_inner()).clone())
            .collect()
    }

    /// Syncs and closes every log cleanly (the next start skips recovery).
    pub(crate) fn close(&self) {
        for log in self.all_logs() {
            if let Err(e) = log.close() {
                tracing::error!(log = %log.dir().display(), error = %e, "closing a log failed");
            }
        }
    }

    /// Applies retention to every log.
    pub(crate) fn enforce_retention(&self) {
        let now = millrace_storage::now_ms();
        for log in self.all_logs() {
            match log.enforce_retention(now) {
                Ok(r) if r.segments_deleted > 0 => tracing::info!(
                    log = %log.dir().display(),
                    segments = r.segments_deleted,
                    bytes = r.bytes_deleted,
                    log_start_offset = r.log_start_offset,
                    "retention deleted segments"
                ),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(log = %log.dir().display(), error = %e, "retention failed")
                }
            }
        }
    }
}

fn new_cluster_id() -> String {
    // Kafka cluster ids are 22-character URL-safe base64 of a UUID.
    let b = Uuid::new_v4().into_bytes();
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut bits: u128 = u128::from_be_bytes(b);
    let mut s = String::with_capacity(22);
    for _ in 0..22 {
        s.push(A[(bits & 63) as usize] as char);
        bits >>= 6;
    }
    s
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("json.tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(path.parent().unwrap_or(Path::new(".")))?.sync_all()
}

/// A boxed error for start-up paths, where the message is all that matters.
pub(crate) mod anyhow_free {
    pub(crate) type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;
}

/// Opens (creating or recovering) the logs of partitions `range` of topic `name`.
fn open_logs(
    log_dir: &LogDir,
    name: &str,
    range: std::ops::Range<i32>,
    config: &LogConfig,
) -> Result<Vec<Arc<Log>>, TopicError> {
    range
        .map(|p| {
            log_dir
                .open_log(name, p, config.clone())
                .map(Arc::new)
                .map_err(|e| TopicError::new(e.kafka_error_code(), e.to_string()))
        })
        .collect()
}
