//! The partition state file (`partition.state`) and the atomic write used for every small file.
//!
//! ```text
//! 0 magic "MRPS" | 4 version u8 (=1) | 5 clean u8 (1 = clean shutdown) | 6 reserved u16 (=0)
//! 8 recovery_point i64 | 16 log_start_offset i64 | 24 crc32c u32 of bytes 0..24      (28 bytes)
//! ```
//!
//! All integers big-endian. The file is replaced atomically: write `partition.state.tmp`,
//! fsync it, rename it over `partition.state`, fsync the directory. A file that is missing, short
//! or fails its CRC reads as "unclean, recovery point 0, log start 0": the log then scans every
//! segment, which is always safe.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

pub(crate) const STATE_FILE: &str = "partition.state";
const MAGIC: &[u8; 4] = b"MRPS";
const LEN: usize = 28;

/// Contents of `partition.state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct PartitionState {
    pub(crate) clean: bool,
    pub(crate) recovery_point: i64,
    pub(crate) log_start_offset: i64,
}

impl PartitionState {
    fn encode(&self) -> [u8; LEN] {
        let mut b = [0u8; LEN];
        b[..4].copy_from_slice(MAGIC);
        b[4] = 1;
        b[5] = u8::from(self.clean);
        b[8..16].copy_from_slice(&self.recovery_point.to_be_bytes());
        b[16..24].copy_from_slice(&self.log_start_offset.to_be_bytes());
        let crc = crate::batch::crc32c(&b[..24]);
        b[24..].copy_from_slice(&crc.to_be_bytes());
        b
    }

    fn decode(b: &[u8]) -> Option<PartitionState> {
        if b.len() != LEN || &b[..4] != MAGIC || b[4] != 1 {
            return None;
        }
        if crate::batch::crc32c(&b[..24]).to_be_bytes() != b[24..28] {
            return None;
        }
        let i64_at = |at: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[at..at + 8]);
            i64::from_be_bytes(a)
        };
        Some(PartitionState {
            clean: b[5] == 1,
            recovery_point: i64_at(8),
            log_start_offset: i64_at(16),
        })
    }

    /// Reads the state of `dir`; `None` if the file is missing or damaged.
    pub(crate) fn read(dir: &Path) -> io::Result<Option<PartitionState>> {
        match fs::read(dir.join(STATE_FILE)) {
            Ok(b) => {
                let s = PartitionState::decode(&b);
                if s.is_none() {
                    tracing::warn!(dir = %dir.display(), "partition.state is damaged; recovering the whole log");
                }
                Ok(s)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub(crate) fn write(&self, dir: &Path) -> io::Result<()> {
        write_atomically(&dir.join(STATE_FILE), &self.encode())
    }
}

/// Replaces `path` with `bytes` so that a crash leaves either the old or the new contents.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = tmp_path(path);
    {
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

/// fsyncs a directory so that creates, renames and unlinks in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(PartitionState::read(dir.path()).unwrap(), None);
        let s = PartitionState { clean: true, recovery_point: 1234, log_start_offset: 17 };
        s.write(dir.path()).unwrap();
        assert_eq!(PartitionState::read(dir.path()).unwrap(), Some(s));
        let path = dir.path().join(STATE_FILE);
        let mut b = fs::read(&path).unwrap();
        b[10] ^= 1;
        fs::write(&path, &b).unwrap();
        assert_eq!(PartitionState::read(dir.path()).unwrap(), None);
        fs::write(&path, &b[..5]).unwrap();
        assert_eq!(PartitionState::read(dir.path()).unwrap(), None);
    }
}
