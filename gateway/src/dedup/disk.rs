//! A chunk store in files (`[wan] dedup_dir`): what the peer sent survives a restart of this
//! gateway, so a migration after the restart still crosses as references.
//!
//! The directory holds numbered segment files, each a header and then records
//! `len u32 | fingerprint [32] | chunk`, appended in the order chunks arrive. The newest
//! segment takes new records until it reaches a sixteenth of the capacity; before a new one
//! starts, the oldest segments are deleted whole until it fits within the capacity. So eviction is oldest first, as
//! in memory, a segment at a time, and the disk use never exceeds `dedup_store_bytes`. Memory
//! holds only where each chunk is (about 100 bytes per chunk, 2-3 % of the store at 4 KiB
//! chunks).
//!
//! Nothing read from disk is trusted: every chunk is hashed again when it is read, and one
//! that no longer matches its fingerprint is dropped and counts as missing (the peer sends
//! it again). Records are written without fsync: after a crash, opening keeps the whole
//! records and cuts a torn tail off.
//!
//! Guest memory lies in these files in the clear, so the directory must be private to the
//! gateway's user (checked on open; docs/CRYPTO.md, "Dedup").

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read};
use std::ops::Range;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rustc_hash::FxHashMap;

use super::store::{ChunkStore, StoreUsage};
use super::{fingerprint, Fingerprint, MAX_CHUNK_LEN};

/// First bytes of every segment file: the format and its version.
const MAGIC: &[u8; 8] = b"LMASDD01";
/// `len u32 | fingerprint [32]` before each chunk.
const RECORD_HEADER: u64 = 4 + 32;
/// A segment is this fraction of the capacity: eviction frees at most this much at once.
const SEGMENTS: u64 = 16;
/// The smallest segment worth a file.
const MIN_SEGMENT_BYTES: u64 = 1 << 20;

/// Why a disk store could not be opened; each names the path.
#[derive(Debug, thiserror::Error)]
pub enum DiskStoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is open by another process (lock held on {path}/lock)")]
    Locked { path: PathBuf },
    #[error(
        "{path} is accessible to other users (mode {mode:o}); guest memory is stored there in \
         the clear: chmod 700 it"
    )]
    NotPrivate { path: PathBuf, mode: u32 },
    #[error(
        "{path} is not an LMAS dedup segment (it does not start with {MAGIC:?}); move it away"
    )]
    Foreign { path: PathBuf },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> DiskStoreError + '_ {
    move |source| DiskStoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// One segment file.
struct Segment {
    id: u64,
    file: File,
    /// Bytes written (header and whole records).
    len: u64,
    /// The store position of its first record.
    first: u64,
    /// Its records in order: (fingerprint, length).
    records: Vec<(Fingerprint, u32)>,
}

/// Where a chunk is: its segment, and its record's offset in that file.
#[derive(Debug, Clone, Copy)]
struct Location {
    segment: u64,
    offset: u64,
    len: u32,
}

/// Chunks in segment files under one directory, bounded by the files' total length.
pub struct DiskStore {
    dir: PathBuf,
    capacity: u64,
    segment_bytes: u64,
    /// Oldest first; the last takes new records.
    segments: VecDeque<Segment>,
    map: FxHashMap<Fingerprint, Location>,
    /// The segment files' total length.
    bytes: u64,
    evictions: u64,
    io_errors: u64,
    /// The position the next record takes.
    next: u64,
    /// The number of the next segment file.
    next_id: u64,
    /// Whether the newest segment takes records: one this process started (those read on
    /// opening are left as they are).
    taking: bool,
    /// One record, header and chunk, so that it is written with one call.
    scratch: Vec<u8>,
    /// Held open: its `flock` keeps a second gateway out of the directory.
    _lock: File,
}

impl DiskStore {
    /// Opens (creating it, mode 0700, if missing) the store in `dir`, bounded by `capacity`
    /// bytes of files, and reads where its chunks are. A torn record at the end of a segment
    /// (a crash while writing) is cut off; segments beyond the capacity (it was lowered) are
    /// deleted, oldest first.
    pub fn open(dir: &Path, capacity: u64) -> Result<DiskStore, DiskStoreError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_error(dir))?;
        let mode = fs::metadata(dir).map_err(io_error(dir))?.mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(DiskStoreError::NotPrivate {
                path: dir.to_owned(),
                mode,
            });
        }
        let lock = lock(dir)?;
        let mut ids = Vec::new();
        for entry in fs::read_dir(dir).map_err(io_error(dir))? {
            let entry = entry.map_err(io_error(dir))?;
            if let Some(id) = segment_id(&entry.file_name().to_string_lossy()) {
                ids.push(id);
            }
        }
        ids.sort_unstable();
        let mut store = DiskStore {
            dir: dir.to_owned(),
            capacity,
            segment_bytes: (capacity / SEGMENTS).max(MIN_SEGMENT_BYTES),
            segments: VecDeque::new(),
            map: FxHashMap::default(),
            bytes: 0,
            evictions: 0,
            io_errors: 0,
            next: 0,
            next_id: ids.last().map_or(0, |id| id + 1),
            taking: false,
            scratch: Vec::new(),
            _lock: lock,
        };
        for id in ids {
            store.load(id)?;
        }
        store.evict_to(capacity);
        Ok(store)
    }

    fn segment_path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id:016}.seg"))
    }

    /// Reads segment `id`'s records into the map, cutting off a torn tail.
    fn load(&mut self, id: u64) -> Result<(), DiskStoreError> {
        let path = self.segment_path(id);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_error(&path))?;
        let file_len = file.metadata().map_err(io_error(&path))?.len();
        let mut reader = BufReader::with_capacity(1 << 16, &file);
        let mut magic = [0; 8];
        if reader.read_exact(&mut magic).is_err() || &magic != MAGIC {
            return Err(DiskStoreError::Foreign { path });
        }
        let (mut len, mut records) = (MAGIC.len() as u64, Vec::new());
        let mut header = [0; RECORD_HEADER as usize];
        while reader.read_exact(&mut header).is_ok() {
            let chunk_len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
            let end = len + RECORD_HEADER + u64::from(chunk_len);
            if chunk_len == 0 || chunk_len > MAX_CHUNK_LEN || end > file_len {
                break;
            }
            let fp: Fingerprint = header[4..].try_into().expect("32 bytes");
            reader
                .seek_relative(i64::from(chunk_len))
                .map_err(io_error(&path))?;
            let at = Location {
                segment: id,
                offset: len,
                len: chunk_len,
            };
            self.map.insert(fp, at);
            records.push((fp, chunk_len));
            len = end;
        }
        drop(reader);
        if len < file_len {
            file.set_len(len).map_err(io_error(&path))?;
        }
        let segment = Segment {
            id,
            file,
            len,
            first: self.next,
            records,
        };
        self.next += segment.records.len() as u64;
        self.bytes += segment.len;
        self.segments.push_back(segment);
        Ok(())
    }

    /// Deletes the oldest segments until the files take at most `bound` bytes (the newest
    /// too if need be: this is called before a new segment takes over).
    fn evict_to(&mut self, bound: u64) {
        while self.bytes > bound {
            let Some(old) = self.segments.pop_front() else {
                break;
            };
            self.bytes -= old.len;
            for (fp, _) in &old.records {
                // A chunk stored again later lives in a newer segment: keep that one.
                if self.map.get(fp).is_some_and(|l| l.segment == old.id) {
                    self.map.remove(fp);
                    self.evictions += 1;
                }
            }
            let path = self.segment_path(old.id);
            drop(old.file);
            if let Err(e) = fs::remove_file(&path) {
                // Counted in `bytes` no more; a file that will not go is the operator's to see.
                log::warn!("dedup store: could not delete {}: {e}", path.display());
                self.io_errors += 1;
            }
        }
    }

    /// A new, empty newest segment.
    fn start_segment(&mut self) -> io::Result<()> {
        let id = self.next_id;
        let path = self.segment_path(id);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        file.write_all_at(MAGIC, 0)?;
        self.next_id += 1;
        self.taking = true;
        self.bytes += MAGIC.len() as u64;
        self.segments.push_back(Segment {
            id,
            file,
            len: MAGIC.len() as u64,
            first: self.next,
            records: Vec::new(),
        });
        Ok(())
    }

    fn append(&mut self, fp: Fingerprint, chunk: &[u8]) -> io::Result<()> {
        let record = RECORD_HEADER + chunk.len() as u64;
        if record + MAGIC.len() as u64 > self.capacity {
            // Larger than the whole store: not kept (as in memory).
            self.evictions += 1;
            return Ok(());
        }
        let full = !self.taking
            || self
                .segments
                .back()
                .is_none_or(|s| s.len + record > self.segment_bytes);
        if full {
            // Room for a whole new segment.
            self.evict_to(self.capacity.saturating_sub(self.segment_bytes));
            self.start_segment()?;
        }
        self.scratch.clear();
        self.scratch
            .extend_from_slice(&(chunk.len() as u32).to_be_bytes());
        self.scratch.extend_from_slice(&fp);
        self.scratch.extend_from_slice(chunk);
        let segment = self.segments.back_mut().expect("started above");
        segment.file.write_all_at(&self.scratch, segment.len)?;
        self.map.insert(
            fp,
            Location {
                segment: segment.id,
                offset: segment.len,
                len: chunk.len() as u32,
            },
        );
        segment.records.push((fp, chunk.len() as u32));
        segment.len += record;
        self.bytes += record;
        self.next += 1;
        Ok(())
    }
}

/// Segment files are named by 16 decimal digits and `.seg`.
fn segment_id(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    (digits.len() == 16 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// Takes the directory's lock file (`flock`, released when the process exits).
fn lock(dir: &Path) -> Result<File, DiskStoreError> {
    let path = dir.join("lock");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(io_error(&path))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(DiskStoreError::Locked {
            path: dir.to_owned(),
        }),
        Err(fs::TryLockError::Error(e)) => Err(io_error(&path)(e)),
    }
}

impl ChunkStore for DiskStore {
    fn insert(&mut self, chunk: &[u8]) -> Fingerprint {
        let fp = fingerprint(chunk);
        if !self.map.contains_key(&fp) {
            if let Err(e) = self.append(fp, chunk) {
                // Not stored: a reference to it misses and the peer sends it again.
                if self.io_errors == 0 {
                    log::warn!("dedup store {}: {e}", self.dir.display());
                }
                self.io_errors += 1;
            }
        }
        fp
    }

    fn append_to(&mut self, fp: &Fingerprint, len: u32, out: &mut Vec<u8>) -> bool {
        let Some(at) = self.map.get(fp).copied().filter(|l| l.len == len) else {
            return false;
        };
        let Some(segment) = self.segments.iter().find(|s| s.id == at.segment) else {
            return false;
        };
        let start = out.len();
        out.resize(start + len as usize, 0);
        let read = segment
            .file
            .read_exact_at(&mut out[start..], at.offset + RECORD_HEADER);
        if read.is_ok() && fingerprint(&out[start..]) == *fp {
            return true;
        }
        // Changed or unreadable on disk: forget it, so that the peer's resend stores it anew.
        out.truncate(start);
        self.map.remove(fp);
        self.io_errors += 1;
        false
    }

    fn usage(&self) -> StoreUsage {
        StoreUsage {
            bytes: self.bytes,
            capacity: self.capacity,
            chunks: self.map.len() as u64,
            evictions: self.evictions,
            io_errors: self.io_errors,
        }
    }

    fn held_in(&self, positions: Range<u64>, max: usize, out: &mut Vec<(Fingerprint, u32)>) -> u64 {
        let mut at = positions.start;
        let mut listed = 0;
        for s in &self.segments {
            let end = s.first + s.records.len() as u64;
            if end <= at {
                continue;
            }
            at = at.max(s.first);
            for &(fp, len) in &s.records[(at - s.first) as usize..] {
                if at >= positions.end {
                    return positions.end;
                }
                if listed == max {
                    return at;
                }
                // Only where the map says this record is the chunk (not stored again later,
                // not found corrupt).
                if self
                    .map
                    .get(&fp)
                    .is_some_and(|l| l.segment == s.id && l.len == len)
                {
                    out.push((fp, len));
                    listed += 1;
                }
                at += 1;
            }
        }
        positions.end
    }

    fn end(&self) -> u64 {
        self.next
    }
}

#[cfg(test)]
pub(crate) use test_dir::TempDir;

#[cfg(test)]
mod test_dir {
    use std::fs;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A fresh private directory, removed when dropped.
    pub(crate) struct TempDir(pub PathBuf);

    impl TempDir {
        pub fn new() -> TempDir {
            static N: AtomicU32 = AtomicU32::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            let path =
                std::env::temp_dir().join(format!("lmas-disk-store-{}-{n}", std::process::id()));
            let _ = fs::remove_dir_all(&path);
            TempDir(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn chunk(seed: u32, len: usize) -> Vec<u8> {
        // Odd seeds: `random_bytes` sets the lowest bit, so n and n + 1 would be one chunk.
        crate::transform::random_bytes(len, 2 * u64::from(seed) + 1)
    }

    fn read(s: &mut DiskStore, c: &[u8]) -> Option<Vec<u8>> {
        let mut out = b"prefix".to_vec();
        let found = s.append_to(&fingerprint(c), c.len() as u32, &mut out);
        assert_eq!(out.len(), if found { 6 + c.len() } else { 6 });
        found.then(|| out.split_off(6))
    }

    fn files_len(dir: &Path) -> u64 {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| segment_id(&e.file_name().to_string_lossy()).is_some())
            .map(|e| e.metadata().unwrap().len())
            .sum()
    }

    #[test]
    fn chunks_survive_reopening_in_order() {
        let dir = TempDir::new();
        let chunks: Vec<_> = (0..50).map(|i| chunk(i, 1000 + i as usize * 7)).collect();
        {
            let mut s = DiskStore::open(&dir.0, 64 << 20).unwrap();
            for c in &chunks {
                s.insert(c);
            }
            s.insert(&chunks[3]);
            assert_eq!(s.usage().chunks, 50);
            assert_eq!(read(&mut s, &chunks[7]).as_deref(), Some(&chunks[7][..]));
        }
        let mut s = DiskStore::open(&dir.0, 64 << 20).unwrap();
        assert_eq!(s.usage().chunks, 50);
        assert_eq!(s.usage().bytes, files_len(&dir.0));
        for c in &chunks {
            assert_eq!(read(&mut s, c).as_deref(), Some(&c[..]));
        }
        let mut listed = Vec::new();
        assert_eq!(s.held_in(0..50, 20, &mut listed), 20);
        assert_eq!(s.held_in(20..50, 100, &mut listed), 50);
        let want: Vec<_> = chunks
            .iter()
            .map(|c| (fingerprint(c), c.len() as u32))
            .collect();
        assert_eq!(listed, want, "oldest first, each once");
        assert_eq!(read(&mut s, &chunk(99, 10)), None);
    }

    #[test]
    fn a_second_opener_is_refused_and_a_shared_directory_too() {
        let dir = TempDir::new();
        let _first = DiskStore::open(&dir.0, 16 << 20).unwrap();
        let e = DiskStore::open(&dir.0, 16 << 20).err().unwrap();
        assert!(matches!(e, DiskStoreError::Locked { .. }), "{e}");
        let other = TempDir::new();
        fs::DirBuilder::new().mode(0o755).create(&other.0).unwrap();
        let e = DiskStore::open(&other.0, 16 << 20).err().unwrap();
        assert!(e.to_string().contains("chmod 700"), "{e}");
        assert!(e.to_string().contains(&*other.0.to_string_lossy()), "{e}");
    }

    #[test]
    fn a_torn_tail_is_cut_and_a_changed_chunk_is_never_delivered() {
        let dir = TempDir::new();
        let (a, b, c) = (chunk(1, 4000), chunk(2, 5000), chunk(3, 6000));
        {
            let mut s = DiskStore::open(&dir.0, 64 << 20).unwrap();
            for x in [&a, &b, &c] {
                s.insert(x);
            }
        }
        let seg = dir.0.join(format!("{:016}.seg", 0));
        let len = fs::metadata(&seg).unwrap().len();
        // A crash in the middle of writing c's record.
        OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(len - 100)
            .unwrap();
        // And a bit of b flipped on disk.
        let f = OpenOptions::new().write(true).open(&seg).unwrap();
        let b_data = 8 + RECORD_HEADER + 4000 + RECORD_HEADER + 17;
        f.write_all_at(&[b[17] ^ 1], b_data).unwrap();
        let mut s = DiskStore::open(&dir.0, 64 << 20).unwrap();
        assert_eq!(s.usage().chunks, 2, "c's torn record is gone");
        assert_eq!(
            fs::metadata(&seg).unwrap().len(),
            len - 6000 - RECORD_HEADER
        );
        assert_eq!(read(&mut s, &a).as_deref(), Some(&a[..]));
        assert_eq!(
            read(&mut s, &b),
            None,
            "b no longer hashes to its fingerprint"
        );
        assert_eq!(s.usage().io_errors, 1);
        // Stored again, it is found again.
        s.insert(&b);
        s.insert(&c);
        assert_eq!(read(&mut s, &b).as_deref(), Some(&b[..]));
        assert_eq!(read(&mut s, &c).as_deref(), Some(&c[..]));
    }

    #[test]
    fn a_file_it_did_not_write_is_named() {
        let dir = TempDir::new();
        drop(DiskStore::open(&dir.0, 16 << 20).unwrap());
        let path = dir.0.join(format!("{:016}.seg", 5));
        fs::write(&path, b"something else").unwrap();
        let e = DiskStore::open(&dir.0, 16 << 20).err().unwrap();
        assert!(matches!(e, DiskStoreError::Foreign { .. }), "{e}");
        assert!(e.to_string().contains("0000000000000005.seg"), "{e}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// Whatever is stored, reopened or evicted: the files stay within the capacity, each
        /// chunk read is the chunk, the newest chunks are held, and a listing names each
        /// held chunk once, oldest first.
        #[test]
        fn the_files_stay_within_the_capacity(
            ops in proptest::collection::vec((0u32..400, 1usize..16384, any::<bool>()), 1..400),
        ) {
            let dir = TempDir::new();
            let capacity = 2 << 20;
            let mut s = DiskStore::open(&dir.0, capacity).unwrap();
            let mut order: Vec<Vec<u8>> = Vec::new();
            for (seed, len, reopen) in ops {
                let c = chunk(seed, len);
                s.insert(&c);
                order.push(c);
                if reopen && seed % 16 == 0 {
                    drop(s);
                    s = DiskStore::open(&dir.0, capacity).unwrap();
                }
                prop_assert!(s.usage().bytes <= capacity);
                prop_assert_eq!(s.usage().bytes, files_len(&dir.0));
            }
            // The newest chunk is always held; every chunk held reads back exactly.
            let newest = order.last().unwrap().clone();
            prop_assert_eq!(read(&mut s, &newest), Some(newest));
            let mut listed = Vec::new();
            let mut at = 0;
            loop {
                at = s.held_in(at..s.end(), 7, &mut listed);
                if at == s.end() {
                    break;
                }
            }
            prop_assert_eq!(listed.len() as u64, s.usage().chunks);
            let unique: std::collections::HashSet<_> = listed.iter().collect();
            prop_assert_eq!(unique.len(), listed.len());
            for c in &order {
                if listed.contains(&(fingerprint(c), c.len() as u32)) {
                    prop_assert_eq!(read(&mut s, c), Some(c.clone()));
                }
            }
            prop_assert_eq!(s.usage().io_errors, 0);
        }
    }
}
