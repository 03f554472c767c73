//! The disk tier under the slice cache, against a real S3 server: a slice memory has dropped comes from disk without
//! a storage read; a full disk takes a slice only over a file used less, so a one-off scan writes nothing; a replaced
//! object is never served mixed; a corrupt or torn file is found and read again from storage; a directory that
//! cannot be written changes nothing but a metric.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use http::StatusCode;
use vd_testsupport::S3Server;
use vd_token::Carrier;

const KIB: usize = 1024;
/// Slices of 256 KiB through 1 MiB of memory: four slices, so a few reads push one out.
const SLICE: usize = 256 * KIB;
const FLAGS: [&str; 3] = ["--cache-size-mib=1", "--slice-size-kib=256", "--metadata-ttl=0"];

/// A counter or gauge (with its labels, if any, as the name) from the agent's metrics text; 0 if not there yet.
fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

const STORAGE_BYTES: &str = "videodelivery_agent_storage_read_bytes_total";
const FROM_DISK: &str = "videodelivery_agent_streams_total{cache=\"disk\"}";
const WRITES: &str = "videodelivery_agent_disk_cache_writes_total";
const EVICTIONS: &str = "videodelivery_agent_disk_cache_evictions_total";

/// Uploads through the S3 API (as a user would), so the server keeps an ETag for the object; a file written into
/// its folder directly has none, and the agent does not cache objects without one.
async fn upload(s3: &S3Server, key: &str, bytes: &[u8]) {
    use object_store::{ObjectStoreExt, PutPayload};
    let store = object_store::aws::AmazonS3Builder::new()
        .with_endpoint(&s3.endpoint)
        .with_bucket_name("media")
        .with_region("us-east-1")
        .with_access_key_id(S3Server::ACCESS_KEY)
        .with_secret_access_key(S3Server::SECRET_KEY)
        .with_allow_http(true)
        .build()
        .unwrap();
    let path = object_store::path::Path::from(key);
    store.put(&path, PutPayload::from(bytes.to_vec())).await.unwrap();
}

/// Waits (up to 10 s) until `name` is at least `want`: writes happen off the request path.
async fn wait_for(agent: &TestAgent, name: &str, want: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = agent.metrics().await;
        if metric(&m, name) >= want {
            return m;
        }
        assert!(Instant::now() < deadline, "{name} stayed below {want}:\n{m}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

struct Setup {
    s3: S3Server,
    agent: TestAgent,
    disk: tempfile::TempDir,
    /// A 2 MiB object read again and again to push other slices out of memory.
    flood_url: String,
}

async fn setup(extra: &[&str]) -> Setup {
    setup_in(None, extra).await
}

/// [`setup`] with the disk tier in `dir` (a fresh folder, `Setup::disk`, when `None`).
async fn setup_in(dir: Option<&Path>, extra: &[&str]) -> Setup {
    let s3 = s3_server();
    s3.put("media", ".keep", b"").unwrap();
    upload(&s3, "flood.mp4", &content(2 << 20)).await;
    let disk = tempfile::tempdir().unwrap();
    let dir = format!("--disk-cache-dir={}", dir.unwrap_or(disk.path()).display());
    let mut flags = vec![dir.as_str(), "--disk-cache-size-mib=64"];
    flags.extend_from_slice(&FLAGS);
    flags.extend_from_slice(extra);
    let agent = start_on_s3(&s3, "s3://media", &flags).await;
    let flood_url = agent.signed("/videos/flood.mp4", Carrier::Query);
    Setup { s3, agent, disk, flood_url }
}

impl Setup {
    /// Uploads `bytes` as `name` and reads it twice (the disk has room: the first use writes both slices), then
    /// waits for both slices to reach the disk; its signed URL.
    async fn admitted(&self, name: &str, bytes: &[u8]) -> String {
        upload(&self.s3, name, bytes).await;
        let url = self.url(name);
        read_exact(&url, bytes).await;
        read_exact(&url, bytes).await;
        wait_for(&self.agent, WRITES, 2).await;
        url
    }

    /// Reads the flood object's eight slices eight times each: used more often than anything else, they take the
    /// memory cache's four places. The memory cache evicts in the background, every few hundred milliseconds, so
    /// the reads are spread over a little more than a second.
    async fn flood_memory(&self) {
        for _ in 0..4 {
            for i in 0..8 {
                let range = format!("bytes={}-{}", i * SLICE, (i + 1) * SLICE - 1);
                for _ in 0..2 {
                    let (status, _, _) = get(&self.flood_url, &[("range", &range)]).await;
                    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
                }
            }
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
    }

    fn url(&self, name: &str) -> String {
        self.agent.signed(&format!("/videos/{name}"), Carrier::Query)
    }
}

/// GETs the whole of `url`, checks it is exactly `want`, and returns the `x-cache` header.
async fn read_exact(url: &str, want: &[u8]) -> String {
    let (status, h, body) = get(url, &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body[..] == want[..], "the bytes differ from the object's");
    header(&h, "x-cache").to_owned()
}

fn slice_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir.join("slices")).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    files
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slice_memory_dropped_is_served_from_disk_without_a_storage_read() {
    let t = setup(&[]).await;
    let film = content(2 * SLICE);
    let url = t.admitted("film.mp4", &film).await;
    t.flood_memory().await;

    let before = t.agent.metrics().await;
    assert_eq!(read_exact(&url, &film).await, "HIT");
    let after = t.agent.metrics().await;
    assert_eq!(metric(&after, STORAGE_BYTES), metric(&before, STORAGE_BYTES), "storage was read:\n{after}");
    assert_eq!(metric(&after, FROM_DISK), metric(&before, FROM_DISK) + 1, "not counted as cache=disk:\n{after}");
    let disk_hits = "videodelivery_agent_disk_cache_hits_total";
    assert_eq!(metric(&after, disk_hits), metric(&before, disk_hits) + 2, "two slices from disk:\n{after}");
    assert!(metric(&after, "videodelivery_agent_disk_cache_size_bytes") >= 2 * SLICE as u64);
    assert_eq!(metric(&after, "videodelivery_agent_disk_cache_writable"), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_takes_a_slice_only_over_a_file_used_less_so_a_one_off_scan_writes_nothing() {
    // Room for three slice files of 260 KiB.
    let t = setup(&["--disk-cache-size-mib=1"]).await;
    let hot = content(3 * SLICE);
    upload(&t.s3, "hot.mp4", &hot).await;
    let hot_url = t.url("hot.mp4");
    // The disk has room: the first read writes the three slices. Watched three times.
    read_exact(&hot_url, &hot).await;
    wait_for(&t.agent, WRITES, 3).await;
    read_exact(&hot_url, &hot).await;
    read_exact(&hot_url, &hot).await;

    // The disk is full. A one-off scan of eight slices: nothing written, nothing evicted.
    let film = content(8 * SLICE);
    upload(&t.s3, "scan.mp4", &film).await;
    read_exact(&t.url("scan.mp4"), &film).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let m = t.agent.metrics().await;
    assert_eq!(metric(&m, WRITES), 3, "a one-off scan was written:\n{m}");
    assert_eq!(metric(&m, EVICTIONS), 0, "a one-off scan pushed a file out:\n{m}");

    // A clip watched more often than the coldest file (three uses) takes its place on its fourth use.
    let clip = content(SLICE);
    upload(&t.s3, "clip.mp4", &clip).await;
    let clip_url = t.url("clip.mp4");
    for _ in 0..3 {
        read_exact(&clip_url, &clip).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(metric(&t.agent.metrics().await, WRITES), 3, "three uses do not outrank three");
    read_exact(&clip_url, &clip).await;
    let m = wait_for(&t.agent, WRITES, 4).await;
    assert_eq!(metric(&m, EVICTIONS), 1, "{m}");
    assert_eq!(slice_files(t.disk.path()).len(), 3, "the evicted file is deleted");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_object_replaced_on_s3_is_never_served_mixed_from_disk() {
    let t = setup(&[]).await;
    let old = content(2 * SLICE);
    let url = t.admitted("film.mp4", &old).await;
    t.flood_memory().await;
    let before = t.agent.metrics().await;
    assert_eq!(read_exact(&url, &old).await, "HIT");
    assert_eq!(metric(&t.agent.metrics().await, FROM_DISK), metric(&before, FROM_DISK) + 1, "the old version on disk");

    // Replaced: its old slices are on disk (and in memory), and none of them may answer.
    let new: Vec<u8> = old.iter().map(|b| b ^ 0x5a).collect();
    upload(&t.s3, "film.mp4", &new).await;
    let before = t.agent.metrics().await;
    assert_eq!(read_exact(&url, &new).await, "MISS");
    let m = t.agent.metrics().await;
    assert_eq!(metric(&m, STORAGE_BYTES), metric(&before, STORAGE_BYTES) + 2 * SLICE as u64, "{m}");
    // A range across the slice boundary, and the new version from disk after memory has dropped it.
    let (status, _, body) = get(&url, &[("range", "bytes=200000-300000")]).await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert!(body[..] == new[200_000..=300_000], "a mix of versions");
    // Its first use wrote the new version's two slices.
    wait_for(&t.agent, WRITES, metric(&before, WRITES) + 2).await;
    t.flood_memory().await;
    let before = t.agent.metrics().await;
    assert_eq!(read_exact(&url, &new).await, "HIT");
    let after = t.agent.metrics().await;
    assert_eq!(metric(&after, FROM_DISK), metric(&before, FROM_DISK) + 1, "{after}");
    assert_eq!(metric(&after, STORAGE_BYTES), metric(&before, STORAGE_BYTES), "{after}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupt_or_torn_file_is_detected_and_read_again_from_storage() {
    let t = setup(&[]).await;
    let film = content(2 * SLICE);
    let url = t.admitted("film.mp4", &film).await;
    let files = slice_files(t.disk.path());
    assert_eq!(files.len(), 2, "{files:?}");
    // One file with a flipped byte in the middle of the video, one cut short (a torn write).
    let mut flipped = std::fs::read(&files[0]).unwrap();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x01;
    std::fs::write(&files[0], &flipped).unwrap();
    let bytes = std::fs::read(&files[1]).unwrap();
    let torn = bytes[..bytes.len() - 1000].to_vec();
    std::fs::write(&files[1], &torn).unwrap();

    t.flood_memory().await;
    let before = t.agent.metrics().await;
    assert_eq!(read_exact(&url, &film).await, "MISS");
    let after = t.agent.metrics().await;
    assert_eq!(metric(&after, "videodelivery_agent_disk_cache_corrupt_total"), 2, "{after}");
    assert_eq!(metric(&after, STORAGE_BYTES), metric(&before, STORAGE_BYTES) + 2 * SLICE as u64, "{after}");
    assert_eq!(metric(&after, FROM_DISK), metric(&before, FROM_DISK), "{after}");
    // The bad files are gone: each slice, read again from storage, is written anew (the disk has room).
    for (f, bad) in files.iter().zip([flipped, torn]) {
        assert!(std::fs::read(f).map_or(true, |now| now != bad), "the bad file is still there: {}", f.display());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_directory_that_cannot_be_written_changes_nothing_but_a_metric() {
    // A regular file where the directory should be: nothing can be created beneath it, even by root.
    let not_a_dir = tempfile::NamedTempFile::new().unwrap();
    let t = setup_in(Some(not_a_dir.path()), &[]).await;
    let film = content(2 * SLICE);
    upload(&t.s3, "film.mp4", &film).await;
    let url = t.url("film.mp4");
    for _ in 0..3 {
        read_exact(&url, &film).await;
    }
    wait_for(&t.agent, "videodelivery_agent_disk_cache_write_errors_total", 1).await;
    t.flood_memory().await;
    assert_eq!(read_exact(&url, &film).await, "MISS");
    let m = t.agent.metrics().await;
    assert_eq!(metric(&m, "videodelivery_agent_disk_cache_writable"), 0, "{m}");
    assert_eq!(metric(&m, WRITES), 0, "{m}");
    assert_eq!(metric(&m, "videodelivery_agent_requests_total{status=\"200\"}"), 4, "{m}");
}

/// A tmpfs of `size` mounted on a temporary directory (tests run as root), unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let target = std::ffi::CString::new(dir.path().to_str().unwrap()).unwrap();
        let (fs, data) = (c"tmpfs", std::ffi::CString::new(format!("size={size}")).unwrap());
        // SAFETY: every pointer is a NUL-terminated string that outlives the call.
        let rc = unsafe { libc::mount(fs.as_ptr(), target.as_ptr(), fs.as_ptr(), 0, data.as_ptr().cast()) };
        assert_eq!(rc, 0, "mounting a tmpfs (the test needs root): {}", std::io::Error::last_os_error());
        Tmpfs { dir }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if let Ok(target) = std::ffi::CString::new(self.dir.path().to_str().unwrap_or_default()) {
            // SAFETY: a NUL-terminated path; a lazy unmount cannot block.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_keeps_what_fits_and_serves_the_rest_from_storage() {
    // Room for two slice files of 260 KiB; the agent is told it has 64 MiB.
    let full = Tmpfs::mount("560k");
    let t = setup_in(Some(full.dir.path()), &[]).await;
    let film = content(4 * SLICE);
    upload(&t.s3, "film.mp4", &film).await;
    let url = t.url("film.mp4");
    read_exact(&url, &film).await;
    read_exact(&url, &film).await;
    let m = wait_for(&t.agent, "videodelivery_agent_disk_cache_write_errors_total", 2).await;
    assert_eq!(metric(&m, WRITES), 2, "{m}");
    assert_eq!(metric(&m, "videodelivery_agent_disk_cache_writable"), 0, "{m}");

    t.flood_memory().await;
    let before = t.agent.metrics().await;
    assert_eq!(read_exact(&url, &film).await, "MISS");
    let after = t.agent.metrics().await;
    let disk_hits = "videodelivery_agent_disk_cache_hits_total";
    assert_eq!(metric(&after, disk_hits), metric(&before, disk_hits) + 2, "what fitted, from disk:\n{after}");
    assert_eq!(metric(&after, STORAGE_BYTES), metric(&before, STORAGE_BYTES) + 2 * SLICE as u64, "{after}");
    assert_eq!(metric(&after, "videodelivery_agent_requests_total{status=\"200\"}"), 3, "{after}");
}
