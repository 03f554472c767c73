//! The slice cache: exact bytes across slice boundaries, never stale after an object changes, bounded under
//! pressure without losing hot slices to a long read, and one storage read for many concurrent viewers.

mod common;

use common::*;
use http::StatusCode;
use vd_token::Carrier;

/// A counter or gauge from the agent's metrics text.
fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
        .unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
}

const KIB: u64 = 1024;

/// `n` viewers asking for the same range at the same moment; each must get 206. Returns their bodies.
async fn viewers_at_once(n: usize, url: &str, range: &str) -> Vec<bytes::Bytes> {
    let viewers = (0..n).map(|_| {
        let (url, range) = (url.to_owned(), range.to_owned());
        tokio::spawn(async move { get(&url, &[("range", &range)]).await })
    });
    let mut bodies = Vec::new();
    for v in futures::future::join_all(viewers).await {
        let (status, _, body) = v.unwrap();
        assert_eq!(status, StatusCode::PARTIAL_CONTENT);
        bodies.push(body);
    }
    bodies
}

#[tokio::test(flavor = "multi_thread")]
async fn ranges_across_slices_are_exact_and_hit_the_second_time() {
    let agent = TestAgent::start(&["--slice-size-kib=64"]).await;
    let src = content(1_000_003);
    agent.put("film.mp4", &src);
    let url = agent.signed("/videos/film.mp4", Carrier::Query);
    let n = src.len() as u64;
    let ranges = [(0, 0), (65_535, 65_536), (100, 300_000), (n - 70_000, n - 1), (131_072, 196_607), (0, n - 1)];
    for (first, last) in ranges {
        let range = format!("bytes={first}-{last}");
        let (status, h, body) = get(&url, &[("range", &range)]).await;
        assert_eq!(status, StatusCode::PARTIAL_CONTENT);
        assert!(body[..] == src[first as usize..=last as usize], "{range}: bytes differ");
        let (_, h2, body2) = get(&url, &[("range", &range)]).await;
        assert!(body2[..] == src[first as usize..=last as usize], "{range}: cached bytes differ");
        assert_eq!(header(&h2, "x-cache"), "HIT", "{range} second time (first: {})", header(&h, "x-cache"));
    }
    let m = agent.metrics().await;
    assert!(metric(&m, "videodelivery_agent_cache_hits_total") > 0);
    assert!(metric(&m, "videodelivery_agent_storage_read_bytes_total") <= n + 64 * KIB, "each slice read once");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_object_is_never_served_stale() {
    // --metadata-ttl=0: storage is asked for the ETag on every request.
    let agent = TestAgent::start(&["--metadata-ttl=0"]).await;
    let old = content(300_000);
    let path = agent.put("clip.mp4", &old);
    let url = agent.signed("/videos/clip.mp4", Carrier::Query);
    let (_, h1, body) = get(&url, &[("range", "bytes=0-99999")]).await;
    assert!(body[..] == old[..100_000]);
    let (_, h2, _) = get(&url, &[("range", "bytes=0-99999")]).await;
    assert_eq!(header(&h2, "x-cache"), "HIT");

    // A new upload of the same name: a different ETag, so different cache keys.
    std::thread::sleep(std::time::Duration::from_millis(20));
    let new: Vec<u8> = old.iter().map(|b| b ^ 0x5a).chain(std::iter::repeat_n(7, 1000)).collect();
    std::fs::write(&path, &new).unwrap();
    let (status, h3, body) = get(&url, &[("range", "bytes=0-99999")]).await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_ne!(header(&h3, "etag"), header(&h1, "etag"));
    assert_eq!(header(&h3, "x-cache"), "MISS");
    assert!(body[..] == new[..100_000], "served the old bytes after the object changed");
}

#[tokio::test(flavor = "multi_thread")]
async fn remembered_metadata_is_refreshed_by_a_changed_etag_or_after_its_ttl() {
    let agent = TestAgent::start(&["--metadata-ttl=3s", "--slice-size-kib=64"]).await;
    let old = content(400_000);
    let path = agent.put("clip.mp4", &old);
    let url = agent.signed("/videos/clip.mp4", Carrier::Query);
    let (_, h1, _) = get(&url, &[("range", "bytes=0-999")]).await;
    let (_, h2, _) = get(&url, &[("range", "bytes=0-999")]).await;
    assert_eq!(header(&h2, "x-cache"), "HIT");
    let heads = metric(&agent.metrics().await, "videodelivery_agent_storage_latency_seconds_count");
    assert_eq!(heads, 1, "the second request did not ask storage");

    std::thread::sleep(std::time::Duration::from_millis(20));
    let new: Vec<u8> = old.iter().map(|b| b ^ 0x5a).collect();
    std::fs::write(&path, &new).unwrap();
    // A slice that has to come from storage: the read carries the remembered ETag, storage refuses it, and the
    // answer starts over with fresh metadata: new bytes and the new ETag, never a mix.
    let (status, h3, body) = get(&url, &[("range", "bytes=300000-300999")]).await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert!(body[..] == new[300_000..301_000], "old bytes after a changed ETag");
    assert_ne!(header(&h3, "etag"), header(&h1, "etag"));
    // Now the new metadata is remembered: the first slice is read again, for the new ETag.
    let (_, h4, body) = get(&url, &[("range", "bytes=0-999")]).await;
    assert_eq!((header(&h4, "x-cache"), header(&h4, "etag")), ("MISS", header(&h3, "etag")));
    assert!(body[..] == new[..1000]);

    // Replaced again: cached slices may answer for at most the TTL, then the new version is served.
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(&path, &old).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(3100));
    let (_, h5, body) = get(&url, &[("range", "bytes=0-999")]).await;
    assert!(body[..] == old[..1000], "still the replaced bytes after the TTL");
    assert_ne!(header(&h5, "etag"), header(&h4, "etag"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cache_stays_within_its_size_under_pressure() {
    let agent = TestAgent::start(&["--cache-size-mib=1", "--slice-size-kib=64"]).await;
    let src = content(8 << 20);
    agent.put("big.mp4", &src);
    let url = agent.signed("/videos/big.mp4", Carrier::Query);
    // 8 MiB of distinct 64 KiB slices through a 1 MiB cache, then the start again.
    for i in 0..128u64 {
        let (first, last) = (i * 65_536, i * 65_536 + 65_535);
        let (_, _, body) = get(&url, &[("range", &format!("bytes={first}-{last}"))]).await;
        assert!(body[..] == src[first as usize..=last as usize], "slice {i}");
    }
    let (_, h, body) = get(&url, &[("range", "bytes=0-65535")]).await;
    assert!(body[..] == src[..65_536]);
    assert_eq!(header(&h, "x-cache"), "MISS", "the first slice was evicted long ago");
    let m = agent.metrics().await;
    assert!(metric(&m, "videodelivery_agent_cache_evictions_total") >= 100, "{m}");
    assert!(metric(&m, "videodelivery_agent_cache_size_bytes") <= 1 << 20);

    // A hot clip, then a read of the whole 8 MiB film through the 1 MiB cache: exact bytes, the cache stays
    // within its size, and the scan does not push the clip out (a new slice is admitted only over colder ones).
    let clip = content(128 * KIB as usize);
    agent.put("clip.mp4", &clip);
    let clip_url = agent.signed("/videos/clip.mp4", Carrier::Query);
    for _ in 0..12 {
        let (_, _, body) = get(&clip_url, &[]).await;
        assert!(body[..] == clip[..]);
    }
    let (_, h, body) = get(&url, &[]).await;
    assert_eq!(header(&h, "x-cache"), "MISS");
    assert!(body[..] == src[..], "the whole film through a cache an eighth its size");
    let (_, h, _) = get(&clip_url, &[]).await;
    assert_eq!(header(&h, "x-cache"), "HIT", "a one-off scan evicted a hot clip");
    assert!(metric(&agent.metrics().await, "videodelivery_agent_cache_size_bytes") <= 1 << 20);
}

#[tokio::test(flavor = "multi_thread")]
async fn viewers_of_a_whole_film_larger_than_a_slice_share_its_storage_reads() {
    // What a `<video>` element asks first is the whole film (`bytes=0-`); ten viewers at once, then one more.
    let agent = TestAgent::start(&["--cache-size-mib=8", "--slice-size-kib=256"]).await;
    let src = content(6 << 20);
    agent.put("film.mp4", &src);
    let url = agent.signed("/videos/film.mp4", Carrier::Query);
    for body in viewers_at_once(10, &url, "bytes=0-").await {
        assert!(body[..] == src[..], "a viewer got different bytes");
    }
    let m = agent.metrics().await;
    assert_eq!(metric(&m, "videodelivery_agent_storage_read_bytes_total"), 6 << 20, "10 viewers, one copy read");
    let (_, h, body) = get(&url, &[("range", "bytes=0-")]).await;
    assert!(body[..] == src[..]);
    assert_eq!(header(&h, "x-cache"), "HIT");
    assert_eq!(metric(&agent.metrics().await, "videodelivery_agent_storage_read_bytes_total"), 6 << 20);
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_viewers_of_a_cold_slice_share_one_storage_read() {
    let agent = TestAgent::start(&["--slice-size-kib=1024"]).await;
    let src = content(4 << 20);
    agent.put("hot.mp4", &src);
    let url = agent.signed("/videos/hot.mp4", Carrier::Query);
    for body in viewers_at_once(32, &url, "bytes=1048576-2097151").await {
        assert!(body[..] == src[1 << 20..2 << 20]);
    }
    let m = agent.metrics().await;
    assert_eq!(metric(&m, "videodelivery_agent_storage_read_bytes_total"), 1 << 20, "32 viewers, one read");
    assert_eq!(metric(&m, "videodelivery_agent_cache_misses_total"), 1);
}

/// A crowd larger than the memory could hold slices for, each, arrives for a cold slice: they wait for one load
/// (which takes one slice's memory) instead of each streaming its own copy past the cache.
#[tokio::test(flavor = "multi_thread")]
async fn a_crowd_for_a_cold_slice_shares_one_read_even_when_memory_is_short() {
    // 4 MiB of cache and 2 of stream budget: six 1 MiB slices at most, a quarter kept spare; 40 viewers.
    let agent = TestAgent::start(&["--cache-size-mib=4", "--stream-memory-mib=2", "--slice-size-kib=1024"]).await;
    let src = content(2 << 20);
    agent.put("cold.mp4", &src);
    let url = agent.signed("/videos/cold.mp4", Carrier::Query);
    for body in viewers_at_once(40, &url, "bytes=0-1048575").await {
        assert!(body[..] == src[..1 << 20], "a viewer got different bytes");
    }
    let m = agent.metrics().await;
    assert_eq!(metric(&m, "videodelivery_agent_storage_read_bytes_total"), 1 << 20, "40 viewers, one read:\n{m}");
    assert_eq!(metric(&m, "videodelivery_agent_cache_streamed_slices_total"), 0, "nobody streamed a copy:\n{m}");
}
