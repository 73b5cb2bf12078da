//! Topic configs: the keys the log honours, their Kafka names, validation, and the mapping onto
//! [`LogConfig`]. One table drives CreateTopics, DescribeConfigs and IncrementalAlterConfigs.

use std::collections::BTreeMap;

use millrace_storage::{LogConfig, TimestampType};

/// A topic config key and how to read its default from the broker's [`LogConfig`].
pub(crate) struct ConfigKey {
    pub(crate) name: &'static str,
    /// DescribeConfigs `config_type`: 1 BOOLEAN, 2 STRING, 3 INT, 4 SHORT, 5 LONG, 6 DOUBLE, 7 LIST.
    pub(crate) config_type: i8,
    pub(crate) default: fn(&LogConfig) -> String,
    pub(crate) doc: &'static str,
}

pub(crate) const TOPIC_CONFIGS: &[ConfigKey] = &[
    ConfigKey { name: "cleanup.policy", config_type: 7, default: |_| "delete".into(), doc: "delete or compact (compaction is accepted, not yet performed)" },
    ConfigKey { name: "flush.messages", config_type: 5, default: |c| c.flush_messages.to_string(), doc: "fsync after this many records; 1 makes every append durable before it is visible; acks=all is answered after an fsync under any value (at the next group commit), acks=1 once written" },
    ConfigKey { name: "flush.ms", config_type: 5, default: |c| c.flush_ms.to_string(), doc: "fsync at least this often while records are unflushed" },
    ConfigKey { name: "index.interval.bytes", config_type: 3, default: |c| c.index_interval_bytes.to_string(), doc: "log bytes between index entries" },
    ConfigKey { name: "max.message.bytes", config_type: 3, default: |c| c.max_message_bytes.to_string(), doc: "largest record batch accepted" },
    ConfigKey { name: "message.timestamp.type", config_type: 2, default: |c| ts_type(c.message_timestamp_type).into(), doc: "CreateTime or LogAppendTime" },
    ConfigKey { name: "retention.bytes", config_type: 5, default: |c| c.retention_bytes.to_string(), doc: "delete old segments while the partition is larger; -1 for no limit" },
    ConfigKey { name: "retention.ms", config_type: 5, default: |c| c.retention_ms.to_string(), doc: "delete segments whose newest record is older; -1 keeps forever" },
    ConfigKey { name: "segment.bytes", config_type: 3, default: |c| c.segment_bytes.to_string(), doc: "segment file size" },
    ConfigKey { name: "segment.index.bytes", config_type: 3, default: |c| c.segment_index_bytes.to_string(), doc: "preallocated size of each index file" },
    ConfigKey { name: "segment.ms", config_type: 5, default: |c| c.segment_ms.to_string(), doc: "roll a segment this long after its first record" },
];

fn ts_type(t: TimestampType) -> &'static str {
    match t {
        TimestampType::CreateTime => "CreateTime",
        TimestampType::LogAppendTime => "LogAppendTime",
    }
}

pub(crate) fn key(name: &str) -> Option<&'static ConfigKey> {
    TOPIC_CONFIGS.iter().find(|k| k.name == name)
}

fn parse<T: std::str::FromStr>(name: &str, v: &str) -> Result<T, String> {
    v.trim().parse().map_err(|_| format!("invalid value {v:?} for {name}"))
}

/// Applies `overrides` on top of the broker defaults; an unknown key or bad value is an error
/// naming it (Kafka: INVALID_CONFIG).
pub(crate) fn log_config(
    defaults: &LogConfig,
    overrides: &BTreeMap<String, String>,
) -> Result<LogConfig, String> {
    let mut c = defaults.clone();
    for (name, v) in overrides {
        // The table decides which keys exist (what DescribeConfigs lists is what is accepted).
        if key(name).is_none() {
            return Err(format!("unknown topic config {name:?}"));
        }
        match name.as_str() {
            "cleanup.policy" => {
                for p in v.split(',') {
                    if !matches!(p.trim(), "delete" | "compact") {
                        return Err(format!("invalid value {v:?} for cleanup.policy"));
                    }
                }
            }
            "flush.messages" => c.flush_messages = parse(name, v)?,
            "flush.ms" => c.flush_ms = parse(name, v)?,
            "index.interval.bytes" => c.index_interval_bytes = parse(name, v)?,
            "max.message.bytes" => c.max_message_bytes = parse(name, v)?,
            "message.timestamp.type" => {
                c.message_timestamp_type = match v.as_str() {
                    "CreateTime" => TimestampType::CreateTime,
                    "LogAppendTime" => TimestampType::LogAppendTime,
                    _ => return Err(format!("invalid value {v:?} for message.timestamp.type")),
                }
            }
            "retention.bytes" => c.retention_bytes = parse(name, v)?,
            "retention.ms" => c.retention_ms = parse(name, v)?,
            "segment.bytes" => c.segment_bytes = parse(name, v)?,
            "segment.index.bytes" => c.segment_index_bytes = parse(name, v)?,
            "segment.ms" => c.segment_ms = parse(name, v)?,
            _ => return Err(format!("unknown topic config {name:?}")),
        }
    }
    c.validate().map_err(|e| e.to_string())?;
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_apply_and_bad_ones_are_named() {
        let d = LogConfig::default();
        let mut o = BTreeMap::new();
        o.insert("retention.ms".to_string(), "1000".to_string());
        o.insert("message.timestamp.type".to_string(), "LogAppendTime".to_string());
        let c = log_config(&d, &o).unwrap();
        assert_eq!(c.retention_ms, 1000);
        assert_eq!(c.message_timestamp_type, TimestampType::LogAppendTime);
        o.insert("segment.bytes".to_string(), "x".to_string());
        assert!(log_config(&d, &o).unwrap_err().contains("segment.bytes"));
        let mut o = BTreeMap::new();
        o.insert("no.such".to_string(), "1".to_string());
        assert!(log_config(&d, &o).is_err());
        for k in TOPIC_CONFIGS {
            assert!(!(k.default)(&d).is_empty());
        }
    }

    /// The table (what DescribeConfigs lists) and the parser (what CreateTopics and
    /// IncrementalAlterConfigs accept) name the same keys: `log_config` refuses names outside
    /// the table, and here each listed key's default, set as an override, is accepted and
    /// changes nothing.
    #[test]
    fn every_listed_key_accepts_its_own_default() {
        let d = LogConfig::default();
        for k in TOPIC_CONFIGS {
            let o = BTreeMap::from([(k.name.to_string(), (k.default)(&d))]);
            let c = log_config(&d, &o).unwrap_or_else(|e| panic!("{}: {e}", k.name));
            assert_eq!(format!("{c:?}"), format!("{d:?}"), "{}", k.name);
        }
    }
}
