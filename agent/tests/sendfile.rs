//! `--sendfile` (on by default): with the slice cache off, long ranges of a local file are sent from the page cache
//! with `sendfile(2)`; checked from the client's side, and through the metric that counts them.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::*;
use http::StatusCode;
use vd_token::Carrier;

/// Three chunks and a part, so bodies cross the 1 MiB stand-ins.
const LEN: usize = 3 * 1024 * 1024 + 12_345;

#[tokio::test(flavor = "multi_thread")]
async fn sendfile_answers_exactly_the_file_bytes_over_http1_keep_alive_and_http2() {
    let agent = TestAgent::start(&["--cache-size-mib=0"]).await;
    let src = content(LEN);
    agent.put("film.mp4", &src);
    let url = agent.signed("/videos/film.mp4", Carrier::Query);
    let n = LEN as u64;
    // Long ranges go by sendfile, short ones are read and copied: interleaved on the client's pooled keep-alive
    // connections, so a head or a copied body follows a file range on the same socket.
    let mut by_sendfile = 0;
    let cases: [(&str, u64, u64); 9] = [
        ("bytes=0-", 0, n - 1),
        ("bytes=0-1", 0, 1),
        ("bytes=1000-1048575", 1000, 1_048_575),
        ("bytes=1048576-2162687", 1_048_576, 2_162_687),
        ("bytes=100-200", 100, 200),
        ("bytes=-70000", n - 70_000, n - 1),
        ("bytes=65536-131071", 65_536, 131_071),
        ("bytes=3000000-", 3_000_000, n - 1),
        ("bytes=5-65540", 5, 65_540),
    ];
    for round in 0..3 {
        for (range, first, last) in cases {
            let (status, h, body) = get(&url, &[("range", range)]).await;
            assert_eq!(status, StatusCode::PARTIAL_CONTENT, "{range}");
            assert_eq!(header(&h, "content-range"), format!("bytes {first}-{last}/{n}"), "{range}");
            assert_eq!(body.len() as u64, last - first + 1, "{range}: length");
            assert!(body[..] == src[first as usize..=last as usize], "round {round}, {range}: bytes differ");
            if last - first + 1 >= 64 * 1024 {
                by_sendfile += last - first + 1;
            }
        }
    }
    let (status, _, body) = get(&url, &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body[..] == src[..], "whole file differs");
    by_sendfile += n;

    // Many at once, each on its own connection.
    let mut tasks = Vec::new();
    for i in 0..16u64 {
        let (url, src) = (url.clone(), src.clone());
        tasks.push(tokio::spawn(async move {
            let first = i * 100_001;
            let last = first + 1_500_000;
            let (status, _, body) = get(&url, &[("range", &format!("bytes={first}-{last}"))]).await;
            assert_eq!(status, StatusCode::PARTIAL_CONTENT);
            assert!(body[..] == src[first as usize..=last as usize], "concurrent range {i} differs");
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    by_sendfile += 16 * 1_500_001;

    // Cleartext HTTP/2 on the same port never takes the sendfile path, and still gets the right bytes.
    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let req = http::Request::get(&url).header("range", "bytes=1000-1048575").body(Default::default()).unwrap();
    let resp = h2.request(req).await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let body = http_body_util::BodyExt::collect(resp.into_body()).await.unwrap().to_bytes();
    assert!(body[..] == src[1000..=1_048_575], "HTTP/2 bytes differ");

    let metrics = agent.metrics().await;
    assert_eq!(
        counter(&metrics, "videodelivery_agent_sendfile_bytes_total"),
        by_sendfile as f64,
        "HTTP/1 long ranges only"
    );
    assert!(counter(&metrics, "videodelivery_agent_sent_bytes_total") > by_sendfile as f64, "all are counted as sent");
}

#[tokio::test(flavor = "multi_thread")]
async fn with_the_slice_cache_on_or_sendfile_off_bytes_are_copied() {
    for flags in [&[][..], &["--cache-size-mib=0", "--sendfile=false"][..]] {
        let agent = TestAgent::start(flags).await;
        let src = content(LEN);
        agent.put("film.mp4", &src);
        let url = agent.signed("/videos/film.mp4", Carrier::Query);
        for _ in 0..2 {
            let (status, _, body) = get(&url, &[("range", "bytes=1000-2000000")]).await;
            assert_eq!(status, StatusCode::PARTIAL_CONTENT);
            assert!(body[..] == src[1000..=2_000_000], "{flags:?}: bytes differ");
        }
        assert_eq!(counter(&agent.metrics().await, "videodelivery_agent_sendfile_bytes_total"), 0.0, "{flags:?}");
    }
}

fn counter(metrics: &str, name: &str) -> f64 {
    let prefix = format!("{name} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in the metrics"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_cut_short_while_it_is_sent_ends_the_answer_short_with_none_but_its_own_bytes_before_the_cut() {
    let agent = TestAgent::start(&["--cache-size-mib=0"]).await;
    let len = 32 * 1024 * 1024;
    let src = content(len);
    let path = agent.put("long.mp4", &src);
    let url = agent.signed("/videos/long.mp4", Carrier::Query);
    let target = url.strip_prefix(&format!("http://{}", agent.addr)).unwrap().to_owned();

    let addr = agent.addr;
    let received = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(s, "GET {target} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        // Read the head and a little, then stop reading while the file is cut to 1 MiB.
        let mut got = vec![0u8; 256 * 1024];
        let mut n = 0;
        while n < got.len() {
            n += s.read(&mut got[n..]).unwrap();
        }
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(1024 * 1024).unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        got.truncate(n);
        got.extend_from_slice(&rest);
        got
    })
    .await
    .unwrap();
    let head_end = received.windows(4).position(|w| w == b"\r\n\r\n").expect("a response head") + 4;
    let head = String::from_utf8_lossy(&received[..head_end]).to_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains(&format!("content-length: {len}")), "{head}");
    let body = &received[head_end..];
    assert!(body.len() < len, "the answer ends short of its length once the file is cut ({} bytes)", body.len());
    // Up to where the file was cut, the file's own bytes. Past it, bytes already handed to the socket may be what
    // the truncation left in their pages (zeros), as with nginx's sendfile: never another file's, never a stand-in.
    let cut = (1024 * 1024).min(body.len());
    let differ = body[..cut].iter().zip(&src).position(|(a, b)| a != b);
    assert!(differ.is_none(), "byte {differ:?} before the cut differs from the file's");
    let other = body[cut..].iter().zip(&src[cut..]).position(|(&a, &b)| a != b && a != 0);
    assert!(other.is_none(), "byte {:?} past the cut is neither the file's nor zero", other.map(|o| o + cut));
}
