//! The disk tier under the slice cache (`--disk-cache-dir`, `--disk-cache-size-mib`): slices spill to files in a
//! local directory (an `emptyDir`), so a catalogue larger than memory is read from storage about once, not again
//! each time memory drops a slice.
//!
//! Our own files over the page cache rather than `foyer`'s hybrid cache: the memory tier (moka, with the memory
//! budget every slice is charged to) stays as it is, and foyer would bring a second memory tier, its own I/O engine
//! and dozens of crates; a file per slice needs a few hundred lines, lets the kernel's page cache keep hot files
//! in otherwise idle memory, and keeps every rule below in plain sight.
//!
//! - One file per slice, named by a digest of object, ETag and slice number, so a changed object (a new ETag) never
//!   meets its old slices. The index of what is on disk lives in memory, an exact LRU bounded in bytes (files
//!   counted in whole 4 KiB blocks, header included); the directory is wiped at start.
//! - Admission by frequency (TinyLFU, as moka admits to memory): while the disk has room, a slice is written on
//!   its first use; once full, a slice is written only if it was used more often lately than the least recently
//!   used file it would push out. Uses are counted for the files and for a few times as many slices not on disk,
//!   and every count halves each time the tier has seen ten uses per file it holds, so yesterday's hits fade. A
//!   one-off read (a scan, a seek) is used once and outranks nothing that was watched, so it cannot flush it.
//! - Writes go through a bounded queue to one writer thread, never on the request path; when the queue is full a
//!   write is dropped and counted. A queued slice keeps its memory charged to the budget until it is written.
//! - Each file starts with a header: the key, the content type, the length and a CRC32 of all of it. A file that
//!   does not match (torn, truncated, corrupt, another key) is deleted, counted, and the slice read from storage.
//! - Reads run on a bounded pool of threads within the storage timeout; an error or a timeout falls back to storage.
//! - A directory that cannot be written (missing, read-only, full) leaves the agent as it is without a disk tier,
//!   and shows in `videodelivery_agent_disk_cache_writable` and `..._disk_cache_write_errors_total`.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Write};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use lru::LruCache;
use sha2::{Digest, Sha256};

use crate::cache::SliceKey;
use crate::local::Pool;
use crate::metrics::Metrics;

/// Slices waiting for the writer at most; beyond this, writes are dropped (and counted).
const QUEUE: usize = 8;
/// Reads from disk at once.
const READ_THREADS: usize = 8;
/// Files take whole blocks.
const BLOCK: u64 = 4096;
const MAGIC: &[u8; 8] = b"VDSLICE1";
/// Magic, CRC32, data length, key length, content type length.
const FIXED_HEADER: usize = 8 + 4 + 8 + 4 + 4;
/// The folder under `--disk-cache-dir` that the agent owns and wipes at start.
const SLICES: &str = "slices";

/// The disk tier; cheap to clone.
#[derive(Clone)]
pub struct DiskCache {
    shared: Arc<Shared>,
    queue: SyncSender<Job>,
}

struct Shared {
    dir: PathBuf,
    /// Bytes the files may take, blocks rounded up, the file being written included.
    budget: u64,
    /// Uses of the tier between two halvings of every count.
    age_every: u64,
    state: Mutex<State>,
    pool: Pool,
    metrics: Arc<Metrics>,
}

struct State {
    /// What is on disk, least recently used first out.
    index: LruCache<SliceKey, OnDisk>,
    /// The index's files and the one being written, in bytes.
    bytes: u64,
    /// Uses of slices not on disk, the least recently used forgotten first.
    recent: LruCache<SliceKey, Uses>,
    /// Slices in the writer's queue, with their uses, and the bytes their files will take.
    queued: HashMap<SliceKey, Uses>,
    queued_bytes: u64,
    /// Uses of the tier so far: the clock of [`Uses`].
    ticks: u64,
}

struct OnDisk {
    /// The file's size in bytes, whole blocks.
    size: u64,
    uses: Uses,
}

/// How often a slice was used lately: the count halves every [`Shared::age_every`] uses of the tier, lazily (a
/// count remembers the age it was last brought to).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Uses {
    count: u32,
    age: u32,
}

impl Uses {
    fn at(self, age: u32) -> u32 {
        self.count.checked_shr(age.wrapping_sub(self.age)).unwrap_or(0)
    }

    fn bump(&mut self, age: u32) -> u32 {
        self.count = self.at(age).saturating_add(1);
        self.age = age;
        self.count
    }
}

struct Job {
    key: SliceKey,
    bytes: Bytes,
    content_type: Option<Arc<str>>,
    /// The file's size in bytes, whole blocks, as counted in `State::queued_bytes`.
    size: u64,
}

/// What a read from disk found.
enum Found {
    Slice(Bytes, Option<Arc<str>>),
    /// The file did not match its header or the key: deleted.
    Corrupt(&'static str),
    /// Evicted meanwhile.
    Gone,
    Failed(String),
}

impl DiskCache {
    /// A disk tier of `budget` bytes in `dir`/slices, with its writer thread. `None` (logged) if the thread cannot
    /// start; a directory that cannot be written is not fatal: the tier then stays empty and says so in metrics.
    pub fn start(
        dir: &Path,
        budget: u64,
        slice_size: u64,
        timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Option<DiskCache> {
        // A slice file is the slice, its header, and the rest of its last block.
        if budget < slice_size + 2 * BLOCK {
            tracing::warn!(budget, slice_size, "the disk cache is smaller than one slice file; running without it");
            return None;
        }
        let slots = usize::try_from(budget / slice_size.max(1)).unwrap_or(usize::MAX);
        // Count the uses of a few times more slices than the disk holds, so a slice used again within a disk's
        // worth of traffic is known; about 120 bytes each, at most 256 Ki of them (30 MiB).
        let recent = NonZeroUsize::new(slots.saturating_mul(4).clamp(1024, 1 << 18)).unwrap_or(NonZeroUsize::MIN);
        let shared = Arc::new(Shared {
            dir: dir.join(SLICES),
            budget,
            // TinyLFU's sample: ten uses per slice the disk holds.
            age_every: (slots as u64).saturating_mul(10).max(1),
            state: Mutex::new(State {
                index: LruCache::unbounded(),
                bytes: 0,
                recent: LruCache::new(recent),
                queued: HashMap::new(),
                queued_bytes: 0,
                ticks: 0,
            }),
            pool: Pool::new(READ_THREADS, timeout),
            metrics,
        });
        let (queue, jobs) = std::sync::mpsc::sync_channel(QUEUE);
        let writer = shared.clone();
        match std::thread::Builder::new().name("disk-cache-writer".into()).spawn(move || writer.write_all(jobs)) {
            Ok(_) => Some(DiskCache { shared, queue }),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the disk cache's writer thread; running without a disk tier");
                None
            }
        }
    }

    /// Whether slice `key` is on disk (as far as the index knows; a corrupt file is found only when read).
    pub(crate) fn contains(&self, key: &SliceKey) -> bool {
        self.shared.state().index.contains(key)
    }

    /// Slice `key` of `len` bytes and its content type, if on disk and intact. Anything else (not there, corrupt,
    /// an error, a read slower than the storage timeout) is `None`, and the caller reads storage.
    pub(crate) async fn read(&self, key: &SliceKey, len: usize) -> Option<(Bytes, Option<Arc<str>>)> {
        {
            let mut state = self.shared.state();
            let age = state.tick(self.shared.age_every);
            state.index.get_mut(key)?.uses.bump(age);
        }
        let shared = self.shared.clone();
        let k = key.clone();
        let found = match self.shared.pool.run(move || Ok(shared.read_file(&k, len))).await {
            Ok(found) => found,
            Err(e) => Found::Failed(e.to_string()),
        };
        let m = &self.shared.metrics;
        match found {
            Found::Slice(bytes, content_type) => {
                m.disk_cache_hits.inc();
                return Some((bytes, content_type));
            }
            Found::Corrupt(why) => {
                m.disk_cache_corrupt.inc();
                tracing::warn!(file = %self.shared.path(key).display(), why, "corrupt disk cache entry deleted; \
                    reading the slice from storage");
            }
            Found::Gone => {}
            Found::Failed(error) => {
                // The file stays indexed (and counted in the size): the error may pass, and it is evicted in turn.
                m.disk_cache_read_errors.inc();
                tracing::debug!(%error, "disk cache read failed; reading the slice from storage");
                return None;
            }
        }
        let mut state = self.shared.state();
        if let Some(gone) = state.index.pop(key) {
            state.bytes = state.bytes.saturating_sub(gone.size);
        }
        self.shared.report(&state);
        None
    }

    /// Counts a use of slice `key` (served from memory or just read from storage) and queues it for writing if it
    /// is not on disk and is admitted: while there is room, or over a file used less. Never waits.
    pub(crate) fn used(&self, key: &SliceKey, bytes: &Bytes, content_type: Option<&Arc<str>>) {
        let mut state = self.shared.state();
        let age = state.tick(self.shared.age_every);
        // `get_mut` also marks it recently used on disk: a slice hot in memory stays on disk for when memory drops
        // it.
        if let Some(on_disk) = state.index.get_mut(key) {
            on_disk.uses.bump(age);
            return;
        }
        if let Some(uses) = state.queued.get_mut(key) {
            uses.bump(age);
            return;
        }
        let mut uses = state.recent.pop(key).unwrap_or_default();
        let count = uses.bump(age);
        let size = self.shared.file_size(bytes.len());
        let room = state.bytes + state.queued_bytes + size <= self.shared.budget;
        let admitted = room || state.index.peek_lru().is_some_and(|(_, coldest)| count > coldest.uses.at(age));
        if !admitted {
            state.recent.put(key.clone(), uses);
            return;
        }
        state.queued.insert(key.clone(), uses);
        state.queued_bytes += size;
        drop(state);
        let job = Job { key: key.clone(), bytes: bytes.clone(), content_type: content_type.cloned(), size };
        if let Err(e) = self.queue.try_send(job) {
            let mut state = self.shared.state();
            state.queued_bytes = state.queued_bytes.saturating_sub(size);
            if let Some(uses) = state.queued.remove(key) {
                // Its next use tries again.
                state.recent.put(key.clone(), uses);
            }
            if matches!(e, TrySendError::Full(_)) {
                self.shared.metrics.disk_cache_writes_dropped.inc();
            }
        }
    }
}

impl State {
    /// Counts one use of the tier; the age of counts now.
    fn tick(&mut self, age_every: u64) -> u32 {
        self.ticks += 1;
        u32::try_from(self.ticks / age_every).unwrap_or(u32::MAX)
    }
}

impl Shared {
    /// A panic elsewhere while the lock was held leaves the state usable (each update is a few map operations).
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// About the bytes a slice of `len` bytes takes on disk, for deciding whether it fits: the data and a block
    /// for its header (key and content type), in whole blocks. The writer counts the exact size.
    fn file_size(&self, len: usize) -> u64 {
        (len as u64 + BLOCK).div_ceil(BLOCK) * BLOCK
    }

    fn report(&self, state: &State) {
        self.metrics.disk_cache_size_bytes.set(i64::try_from(state.bytes).unwrap_or(i64::MAX));
    }

    /// The file of slice `key`: a digest, so any object name makes a short, safe file name.
    fn path(&self, key: &SliceKey) -> PathBuf {
        let digest = Sha256::digest(encode_key(key));
        let name: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
        self.dir.join(name)
    }

    /// The writer thread: wipes what an earlier run left, then writes queued slices until the cache is dropped.
    fn write_all(self: Arc<Self>, jobs: Receiver<Job>) {
        let ready = wipe(&self.dir);
        if let Err(e) = &ready {
            tracing::warn!(dir = %self.dir.display(), error = %e, "the disk cache directory cannot be used; \
                serving from memory and storage only");
        }
        self.metrics.disk_cache_writable.set(i64::from(ready.is_ok()));
        while let Ok(job) = jobs.recv() {
            match self.write(job) {
                Ok(()) => {
                    self.metrics.disk_cache_writes.inc();
                    self.metrics.disk_cache_writable.set(1);
                }
                Err(e) => {
                    self.metrics.disk_cache_write_errors.inc();
                    self.metrics.disk_cache_writable.set(0);
                    tracing::debug!(error = %e, "disk cache write failed");
                }
            }
        }
    }

    /// Writes one queued slice, making room first, and moves it (with its uses) from the queue to the index.
    fn write(&self, job: Job) -> io::Result<()> {
        let header = encode_header(&job.key, job.content_type.as_deref(), &job.bytes);
        let size = (header.len() as u64 + job.bytes.len() as u64).div_ceil(BLOCK) * BLOCK;
        let written = if size > self.budget {
            Err(io::Error::new(io::ErrorKind::StorageFull, "a slice file larger than the whole disk cache"))
        } else {
            self.make_room(size);
            let path = self.path(&job.key);
            let tmp = path.with_extension("tmp");
            let written = write_file(&tmp, &header, &job.bytes).and_then(|()| std::fs::rename(&tmp, &path));
            if written.is_err() {
                let _ = std::fs::remove_file(&tmp);
                let mut state = self.state();
                state.bytes = state.bytes.saturating_sub(size);
            }
            written
        };
        let mut state = self.state();
        state.queued_bytes = state.queued_bytes.saturating_sub(job.size);
        let uses = state.queued.remove(&job.key).unwrap_or_default();
        if written.is_ok() {
            if let Some(replaced) = state.index.put(job.key, OnDisk { size, uses }) {
                state.bytes = state.bytes.saturating_sub(replaced.size);
            }
        } else {
            // Its uses still count when it is tried again.
            state.recent.put(job.key, uses);
        }
        self.report(&state);
        written
    }

    /// Evicts the least recently used files until `size` more bytes fit, and counts those bytes taken: the
    /// directory never holds more than the budget, the file being written included.
    fn make_room(&self, size: u64) {
        let evicted = {
            let mut state = self.state();
            let mut evicted = Vec::new();
            while state.bytes + size > self.budget {
                let Some((old, gone)) = state.index.pop_lru() else { break };
                state.bytes = state.bytes.saturating_sub(gone.size);
                evicted.push(old);
            }
            state.bytes += size;
            evicted
        };
        for old in &evicted {
            let _ = std::fs::remove_file(self.path(old));
        }
        self.metrics.disk_cache_evictions.inc_by(evicted.len() as u64);
    }

    /// Reads and checks the file of `key`, which must hold `len` bytes. Blocking.
    fn read_file(&self, key: &SliceKey, len: usize) -> Found {
        let path = self.path(key);
        let data = match map(&path) {
            Ok(data) => data,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Found::Gone,
            Err(e) => return Found::Failed(e.to_string()),
        };
        match check(key, len, data) {
            Ok((bytes, content_type)) => Found::Slice(bytes, content_type),
            Err(why) => {
                let _ = std::fs::remove_file(&path);
                Found::Corrupt(why)
            }
        }
    }
}

/// Deletes what an earlier run left (its index is gone) and makes the folder.
fn wipe(dir: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::create_dir_all(dir)
}

fn write_file(path: &Path, header: &[u8], bytes: &[u8]) -> io::Result<()> {
    let mut f = File::create(path)?;
    f.write_all(header)?;
    f.write_all(bytes)?;
    // No fsync: a file torn by a crash is never read (the index starts empty), and one torn otherwise fails its CRC.
    Ok(())
}

/// Object, ETag and slice number, unambiguous (neither an object name nor an ETag holds a NUL).
fn encode_key(key: &SliceKey) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.object.len() + key.etag.len() + 24);
    k.extend_from_slice(key.object.as_bytes());
    k.push(0);
    k.extend_from_slice(key.etag.as_bytes());
    k.push(0);
    k.extend_from_slice(key.index.to_string().as_bytes());
    k
}

/// Magic, CRC32 (of everything after it, the bytes included), data length, key length, content type length, key,
/// content type.
fn encode_header(key: &SliceKey, content_type: Option<&str>, bytes: &[u8]) -> Vec<u8> {
    let key = encode_key(key);
    let ct = content_type.unwrap_or("").as_bytes();
    let mut h = Vec::with_capacity(FIXED_HEADER + key.len() + ct.len());
    h.extend_from_slice(MAGIC);
    h.extend_from_slice(&[0; 4]);
    h.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    h.extend_from_slice(&(key.len() as u32).to_le_bytes());
    h.extend_from_slice(&(ct.len() as u32).to_le_bytes());
    h.extend_from_slice(&key);
    h.extend_from_slice(ct);
    let mut crc = crc32fast::Hasher::new();
    crc.update(&h[12..]);
    crc.update(bytes);
    h[8..12].copy_from_slice(&crc.finalize().to_le_bytes());
    h
}

/// The file mapped read-only, as `Bytes`: the page cache's own pages, so a hit costs no copy out of the page cache
/// and no fresh memory (the write to the socket is then the only copy the agent makes). Populated at once, so
/// the checksum walks mapped pages instead of faulting on each.
fn map(path: &Path) -> io::Result<Bytes> {
    let file = std::fs::File::open(path)?;
    if file.metadata()?.len() == 0 {
        return Ok(Bytes::new());
    }
    // SAFETY: the files are the agent's own, in a folder it wiped at start: each is written under a temporary
    // name and renamed into place, and never written or truncated after (eviction unlinks it, which leaves a
    // mapping intact), so the mapped bytes cannot change while `Bytes` lends them out.
    let map = unsafe { memmap2::MmapOptions::new().populate().map(&file)? };
    Ok(Bytes::from_owner(map))
}

/// The slice in a file's `data`, if the header says it is `key`'s, `len` bytes long, and the CRC matches.
fn check(key: &SliceKey, len: usize, data: Bytes) -> Result<(Bytes, Option<Arc<str>>), &'static str> {
    let field = |at: usize, n: usize| data.get(at..at + n).ok_or("shorter than its header");
    if field(0, 8)? != MAGIC {
        return Err("not a slice file");
    }
    let u32_at = |at| field(at, 4).map(|b| u32::from_le_bytes(b.try_into().unwrap_or_default()) as usize);
    let stored_crc = u32_at(8)? as u32;
    let data_len = u64::from_le_bytes(field(12, 8)?.try_into().unwrap_or_default());
    let (key_len, ct_len) = (u32_at(20)?, u32_at(24)?);
    let start = FIXED_HEADER + key_len + ct_len;
    if data_len != len as u64 || data.len() != start.saturating_add(len) {
        return Err("torn: the length differs");
    }
    if field(FIXED_HEADER, key_len)? != encode_key(key) {
        return Err("another slice's file");
    }
    if crc32fast::hash(&data[12..]) != stored_crc {
        return Err("checksum mismatch");
    }
    let ct = std::str::from_utf8(field(FIXED_HEADER + key_len, ct_len)?).map_err(|_| "content type not UTF-8")?;
    let content_type = (!ct.is_empty()).then(|| Arc::from(ct));
    Ok((data.slice(start..), content_type))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u64) -> SliceKey {
        SliceKey { object: "a/film.mp4".into(), etag: "\"e1\"".into(), index: i }
    }

    #[test]
    fn a_count_halves_with_each_age_it_has_not_seen() {
        let mut uses = Uses::default();
        for _ in 0..12 {
            uses.bump(0);
        }
        assert_eq!((uses.at(0), uses.at(1), uses.at(3), uses.at(40)), (12, 6, 1, 0));
        assert_eq!(uses.bump(2), 4, "brought to age 2 (12 / 4), then used");
    }

    /// A disk tier of room for three files of 4 KiB slices, in a fresh folder.
    fn small_tier() -> (DiskCache, tempfile::TempDir, Arc<Metrics>) {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::default());
        let disk = DiskCache::start(dir.path(), 3 * 2 * BLOCK, BLOCK, Duration::from_secs(5), metrics.clone()).unwrap();
        (disk, dir, metrics)
    }

    /// Uses slice `i` `n` times and waits for the writer to settle.
    fn use_n(disk: &DiskCache, i: u64, n: usize) {
        let bytes = Bytes::from(vec![i as u8; BLOCK as usize]);
        for _ in 0..n {
            disk.used(&key(i), &bytes, None);
        }
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while !disk.shared.state().queued.is_empty() {
            assert!(std::time::Instant::now() < until, "the writer did not write");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn on_disk(disk: &DiskCache) -> Vec<u64> {
        let mut on: Vec<u64> = disk.shared.state().index.iter().map(|(k, _)| k.index).collect();
        on.sort();
        on
    }

    #[test]
    fn a_slice_is_written_on_first_use_while_there_is_room_then_only_over_a_file_used_less() {
        let (disk, dir, metrics) = small_tier();
        for i in 0..3 {
            use_n(&disk, i, 1);
        }
        assert_eq!(on_disk(&disk), [0, 1, 2], "room for three: each written on its first use");
        for i in 0..3 {
            use_n(&disk, i, 2);
        }
        // Full, and each file used three times: a one-off scan writes nothing and evicts nothing.
        for i in 10..30 {
            use_n(&disk, i, 1);
        }
        assert_eq!(on_disk(&disk), [0, 1, 2]);
        assert_eq!((metrics.disk_cache_writes.get(), metrics.disk_cache_evictions.get()), (3, 0));
        // Used as often as the least recently used file (slice 0): not enough. Once more: it takes its place.
        use_n(&disk, 7, 3);
        assert_eq!(on_disk(&disk), [0, 1, 2]);
        use_n(&disk, 7, 1);
        assert_eq!(on_disk(&disk), [1, 2, 7]);
        assert_eq!(std::fs::read_dir(dir.path().join(SLICES)).unwrap().count(), 3, "the evicted file is deleted");
        assert_eq!((metrics.disk_cache_writes.get(), metrics.disk_cache_evictions.get()), (4, 1));
    }

    #[test]
    fn old_uses_fade_so_a_once_hot_file_gives_way_to_a_slice_hot_now() {
        let (disk, _dir, _) = small_tier();
        // Six slots of 4 KiB in the budget: counts halve every 60 uses of the tier.
        for i in 0..3 {
            use_n(&disk, i, 8);
        }
        use_n(&disk, 60, 3);
        assert_eq!(on_disk(&disk), [0, 1, 2], "three uses do not outrank eight");
        // 120 one-off reads later (two halvings), the files' eight uses count for two, still more than one.
        for i in 100..220 {
            use_n(&disk, i, 1);
        }
        assert_eq!(on_disk(&disk), [0, 1, 2]);
        use_n(&disk, 61, 3);
        assert_eq!(on_disk(&disk), [1, 2, 61], "three uses now outrank eight long ago");
    }

    #[test]
    fn a_file_reads_back_only_for_its_key_length_and_bytes() {
        let bytes = vec![7u8; 5000];
        let mut file = encode_header(&key(3), Some("video/mp4"), &bytes);
        file.extend_from_slice(&bytes);
        let (b, ct) = check(&key(3), 5000, file.clone().into()).unwrap();
        assert_eq!((&b[..], ct.as_deref()), (&bytes[..], Some("video/mp4")));
        assert_eq!(check(&key(4), 5000, file.clone().into()).unwrap_err(), "another slice's file");
        assert_eq!(check(&key(3), 4999, file.clone().into()).unwrap_err(), "torn: the length differs");
        let mut torn = file.clone();
        torn.truncate(file.len() - 1);
        assert_eq!(check(&key(3), 5000, torn.into()).unwrap_err(), "torn: the length differs");
        let mut flipped = file.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(check(&key(3), 5000, flipped.into()).unwrap_err(), "checksum mismatch");
        assert!(check(&key(3), 5000, file[..10].to_vec().into()).is_err());
        assert!(check(&key(3), 5000, Bytes::new()).is_err());
    }

    #[test]
    fn a_mapped_file_stays_readable_after_eviction_unlinks_it_or_a_new_file_replaces_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("slice");
        std::fs::write(&path, vec![1u8; 10_000]).unwrap();
        let first = map(&path).unwrap();
        // The writer's way: a new file under a temporary name, renamed over the old one.
        std::fs::write(dir.path().join("slice.tmp"), vec![2u8; 10_000]).unwrap();
        std::fs::rename(dir.path().join("slice.tmp"), &path).unwrap();
        let second = map(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(first.iter().all(|&b| b == 1) && first.len() == 10_000, "the old mapping keeps the old bytes");
        assert!(second.iter().all(|&b| b == 2) && second.len() == 10_000);
        std::fs::write(&path, b"").unwrap();
        assert!(map(&path).unwrap().is_empty(), "an empty file maps to nothing (then fails its check)");
    }
}
