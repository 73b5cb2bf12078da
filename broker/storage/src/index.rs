//! Sparse, memory-mapped segment indexes: the offset index (`.index`) and the time index
//! (`.timeindex`).
//!
//! Both are arrays of fixed-width big-endian entries in a file that is preallocated to
//! `segment.index.bytes` (rounded down to whole entries) while its segment is active, and trimmed
//! to exactly `entries * width` bytes when the segment rolls or the log closes. Entries are added
//! every `index.interval.bytes` of log, so a lookup lands on a batch at or before the target and
//! the reader scans forward through batch headers from there.
//!
//! ```text
//! .index      [relative base offset u32 | file position u32]            8 bytes per entry
//! .timeindex  [max timestamp so far i64 | relative base offset u32]     12 bytes per entry
//! ```
//!
//! Keys strictly increase in both files. A time index entry `(t, o)` says: the batch at relative
//! offset `o` is the first in the segment whose records reach max timestamp `t`, so every record
//! before it is older than `t`. A sealed segment's time index ends with the segment's max
//! timestamp. The number of entries of a file that was not trimmed (after a crash: the active
//! segment, or one rolled but not yet sealed by the background thread) is unknown, which is why
//! recovery rebuilds the indexes of every segment it scans.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;

use memmap2::MmapMut;

/// Bytes per offset index entry.
pub(crate) const OFFSET_ENTRY: usize = 8;
/// Bytes per time index entry.
pub(crate) const TIME_ENTRY: usize = 12;

/// One index file: a writable map over a preallocated file and the number of valid entries.
#[derive(Debug)]
pub(crate) struct IndexFile {
    file: File,
    map: Option<MmapMut>,
    width: usize,
    entries: usize,
    capacity: usize,
    /// Entries were added since the file was last trimmed and synced.
    dirty: bool,
}

impl IndexFile {
    /// Opens an existing trimmed index: its size must be a whole number of entries.
    /// Returns `Ok(None)` when the file is missing or its size is not a multiple of the width.
    pub(crate) fn open_trimmed(path: &Path, width: usize) -> io::Result<Option<IndexFile>> {
        let file = match OpenOptions::new().read(true).write(true).open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let len = file.metadata()?.len();
        if len % width as u64 != 0 {
            return Ok(None);
        }
        let entries = (len / width as u64) as usize;
        let mut index =
            IndexFile { file, map: None, width, entries, capacity: entries, dirty: false };
        index.remap(len, false)?;
        Ok(Some(index))
    }

    /// Creates (or empties) an index file preallocated for `max_bytes`.
    pub(crate) fn create(path: &Path, width: usize, max_bytes: u64) -> io::Result<IndexFile> {
        let file =
            OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path)?;
        let capacity = (max_bytes / width as u64) as usize;
        let len = (capacity * width) as u64;
        allocate(&file, len)?;
        let mut index = IndexFile { file, map: None, width, entries: 0, capacity, dirty: false };
        index.remap(len, true)?;
        Ok(index)
    }

    /// Maps the file's `len` bytes. A map to be `writing` entries (into blocks allocated but
    /// never written, which read as zeros) is advised random access: the first write to each
    /// page faults in that page alone, where the kernel's read-around would zero-fill up to
    /// `read_ahead_kb` of them at once (8 MiB on the development VM: milliseconds of an append's time at each
    /// new segment, seen in `perf` as `filemap_fault` → `zero_user_segments`).
    fn remap(&mut self, len: u64, writing: bool) -> io::Result<()> {
        self.map = None;
        if len > 0 {
            // SAFETY: the file is ours alone (one Log owns a partition directory) and is only
            // resized through this struct, after the old map has been dropped.
            let map = unsafe { MmapMut::map_mut(&self.file)? };
            if writing {
                // Advice only: a kernel that refuses it just reads around as before.
                let _ = map.advise(memmap2::Advice::Random);
            }
            self.map = Some(map);
        }
        Ok(())
    }

    pub(crate) fn len(&self) -> usize {
        self.entries
    }
    pub(crate) fn is_full(&self) -> bool {
        self.entries >= self.capacity
    }

    pub(crate) fn entry(&self, i: usize) -> &[u8] {
        debug_assert!(i < self.entries);
        match &self.map {
            Some(m) => &m[i * self.width..(i + 1) * self.width],
            None => &[],
        }
    }

    /// Appends one entry; `false` if the file is full.
    pub(crate) fn push(&mut self, bytes: &[u8]) -> bool {
        debug_assert_eq!(bytes.len(), self.width);
        if self.is_full() {
            return false;
        }
        let Some(m) = self.map.as_mut() else { return false };
        let at = self.entries * self.width;
        m[at..at + self.width].copy_from_slice(bytes);
        self.entries += 1;
        self.dirty = true;
        true
    }

    /// Preallocates the file again to `max_bytes` (after a trim) so entries can be added.
    pub(crate) fn grow(&mut self, max_bytes: u64) -> io::Result<()> {
        let capacity = (max_bytes / self.width as u64) as usize;
        if capacity <= self.capacity {
            return Ok(());
        }
        self.map = None;
        allocate(&self.file, (capacity * self.width) as u64)?;
        self.capacity = capacity;
        self.remap((capacity * self.width) as u64, true)
    }

    /// Shrinks the index to its entries in memory (a map of the entries only: readers see the
    /// same entries, and no more can be added) and returns a second handle on the file with
    /// their length, for [`cut`] to shrink the file and sync it; the caller may do that without
    /// the segment's lock (`Segment::seal`). Until then the file is longer than its entries and
    /// not synced, as before a seal. `None` when the index is trimmed and synced already (a
    /// rolled segment at open): nothing to do.
    pub(crate) fn detach_trimmed(&mut self) -> io::Result<Option<(File, u64)>> {
        let len = self.entries * self.width;
        // A full index is trimmed by size but its entries may not be on disk yet.
        if !self.dirty && self.capacity == self.entries && self.file.metadata()?.len() == len as u64
        {
            return Ok(None);
        }
        let file = self.file.try_clone()?;
        self.map = match len {
            0 => None,
            // SAFETY: as in `remap`; the map covers the entries only, which a cut of the file
            // to their length keeps. Made before the old one goes, which a failure leaves.
            _ => Some(unsafe { memmap2::MmapOptions::new().len(len).map_mut(&self.file)? }),
        };
        self.capacity = self.entries;
        self.dirty = false;
        Ok(Some((file, len as u64)))
    }

    /// Shrinks the file to exactly its entries and syncs it.
    pub(crate) fn trim(&mut self) -> io::Result<()> {
        match self.detach_trimmed()? {
            Some((file, len)) => cut(&file, len),
            None => Ok(()),
        }
    }
}

/// Shrinks an index file detached by [`IndexFile::detach_trimmed`] to `len` and syncs it: one
/// sync writes back the entries stored through the old map (their pages stay dirty in the page
/// cache when a map goes) and the new length.
pub(crate) fn cut(file: &File, len: u64) -> io::Result<()> {
    file.set_len(len)?;
    file.sync_all()
}

/// Sizes an index file to `len` with its blocks allocated. A sparse file would let a store into
/// the map hit a full disk as SIGBUS; allocating up front turns that into an error here.
fn allocate(file: &File, len: u64) -> io::Result<()> {
    file.set_len(len)?;
    if len == 0 {
        return Ok(());
    }
    let len =
        libc::off_t::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: plain system call on a file descriptor we own; no memory is passed.
    let rc = unsafe { libc::posix_fallocate(std::os::fd::AsRawFd::as_raw_fd(file), 0, len) };
    match rc {
        0 => Ok(()),
        // Filesystems without fallocate keep the sparse file.
        libc::EOPNOTSUPP | libc::EINVAL => Ok(()),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

/// `relative offset -> position`, see the module comment.
#[derive(Debug)]
pub(crate) struct OffsetIndex(pub(crate) IndexFile);

impl OffsetIndex {
    pub(crate) fn get(&self, i: usize) -> (u32, u32) {
        let e = self.0.entry(i);
        (u32::from_be_bytes([e[0], e[1], e[2], e[3]]), u32::from_be_bytes([e[4], e[5], e[6], e[7]]))
    }

    pub(crate) fn push(&mut self, relative_offset: u32, position: u32) -> bool {
        let mut e = [0u8; OFFSET_ENTRY];
        e[..4].copy_from_slice(&relative_offset.to_be_bytes());
        e[4..].copy_from_slice(&position.to_be_bytes());
        self.0.push(&e)
    }

    /// The last entry whose relative offset is `<= relative_offset`, as `(offset, position)`.
    pub(crate) fn lookup(&self, relative_offset: u32) -> Option<(u32, u32)> {
        let n = partition_point(self.0.len(), |i| self.get(i).0 <= relative_offset);
        (n > 0).then(|| self.get(n - 1))
    }

    /// Entries strictly increase in offset and position, and point inside `log_len` bytes.
    pub(crate) fn is_sane(&self, log_len: u64) -> bool {
        let mut prev: Option<(u32, u32)> = None;
        for i in 0..self.0.len() {
            let (o, p) = self.get(i);
            if u64::from(p) >= log_len {
                return false;
            }
            if let Some((po, pp)) = prev {
                if o <= po || p <= pp {
                    return false;
                }
            }
            prev = Some((o, p));
        }
        true
    }
}

/// `max timestamp so far -> relative offset`, see the module comment.
#[derive(Debug)]
pub(crate) struct TimeIndex(pub(crate) IndexFile);

impl TimeIndex {
    pub(crate) fn get(&self, i: usize) -> (i64, u32) {
        let e = self.0.entry(i);
        let mut t = [0u8; 8];
        t.copy_from_slice(&e[..8]);
        (i64::from_be_bytes(t), u32::from_be_bytes([e[8], e[9], e[10], e[11]]))
    }

    pub(crate) fn last(&self) -> Option<(i64, u32)> {
        (self.0.len() > 0).then(|| self.get(self.0.len() - 1))
    }

    /// Appends `(timestamp, relative_offset)` if the timestamp is newer than the last entry's.
    /// Returns `false` only when the file is full.
    pub(crate) fn maybe_push(&mut self, timestamp: i64, relative_offset: u32) -> bool {
        if let Some((t, o)) = self.last() {
            if timestamp <= t || relative_offset <= o {
                return true;
            }
        }
        let mut e = [0u8; TIME_ENTRY];
        e[..8].copy_from_slice(&timestamp.to_be_bytes());
        e[8..].copy_from_slice(&relative_offset.to_be_bytes());
        self.0.push(&e)
    }

    /// The last entry whose timestamp is `<= timestamp`: a batch before which every record is
    /// older than `timestamp`.
    pub(crate) fn lookup(&self, timestamp: i64) -> Option<(i64, u32)> {
        let n = partition_point(self.0.len(), |i| self.get(i).0 <= timestamp);
        (n > 0).then(|| self.get(n - 1))
    }

    /// Entries strictly increase in both timestamp and offset, below `relative_offset_end`.
    pub(crate) fn is_sane(&self, relative_offset_end: u64) -> bool {
        let mut prev: Option<(i64, u32)> = None;
        for i in 0..self.0.len() {
            let (t, o) = self.get(i);
            if u64::from(o) >= relative_offset_end {
                return false;
            }
            if let Some((pt, po)) = prev {
                if t <= pt || o <= po {
                    return false;
                }
            }
            prev = Some((t, o));
        }
        true
    }
}

/// First index in `0..n` for which `pred` is false, `pred` being true then false.
fn partition_point(n: usize, pred: impl Fn(usize) -> bool) -> usize {
    let (mut lo, mut hi) = (0usize, n);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if pred(mid) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_index_lookup_trim_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.index");
        let mut idx = OffsetIndex(IndexFile::create(&path, OFFSET_ENTRY, 8 * 4).unwrap());
        assert_eq!(idx.lookup(5), None);
        assert!(idx.push(10, 100));
        assert!(idx.push(20, 200));
        assert!(idx.push(30, 300));
        assert!(idx.push(40, 400));
        assert!(!idx.push(50, 500), "full");
        assert_eq!(idx.lookup(9), None);
        assert_eq!(idx.lookup(10), Some((10, 100)));
        assert_eq!(idx.lookup(29), Some((20, 200)));
        assert_eq!(idx.lookup(1000), Some((40, 400)));
        idx.0.trim().unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 32);
        drop(idx);
        let idx = OffsetIndex(IndexFile::open_trimmed(&path, OFFSET_ENTRY).unwrap().unwrap());
        assert_eq!(idx.0.len(), 4);
        assert!(idx.is_sane(401));
        assert!(!idx.is_sane(400));
        assert_eq!(idx.lookup(25), Some((20, 200)));
    }

    #[test]
    fn time_index_keeps_strictly_increasing_entries() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = TimeIndex(
            IndexFile::create(&dir.path().join("0.timeindex"), TIME_ENTRY, 1200).unwrap(),
        );
        assert!(t.maybe_push(100, 0));
        assert!(t.maybe_push(100, 5)); // not newer: skipped
        assert!(t.maybe_push(90, 6)); // older: skipped
        assert!(t.maybe_push(200, 7));
        assert_eq!(t.0.len(), 2);
        assert_eq!(t.lookup(99), None);
        assert_eq!(t.lookup(150), Some((100, 0)));
        assert_eq!(t.lookup(200), Some((200, 7)));
        assert!(t.is_sane(8));
        assert!(!t.is_sane(7));
    }

    #[test]
    fn untrimmed_or_ragged_files_are_not_opened_as_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.index");
        assert!(IndexFile::open_trimmed(&path, OFFSET_ENTRY).unwrap().is_none());
        std::fs::write(&path, [0u8; 9]).unwrap();
        assert!(IndexFile::open_trimmed(&path, OFFSET_ENTRY).unwrap().is_none());
    }
}
