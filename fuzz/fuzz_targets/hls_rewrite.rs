//! HLS playlist rewriting (`videodelivery_agent::manifest`, kind `Hls`) on arbitrary bytes.
//!
//! Input: one control byte (host, how the body is cut into stream chunks, grant kind, manifest path), then the
//! playlist. Properties: never panics; the output is the input with `token=` insertions only; every added token is
//! on a URI that resolves to the request's host and port; a minted (exact) token names the path the player fetches.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vd_fuzz::rewrite_target;
use videodelivery_agent::manifest::Kind;

fuzz_target!(|data: &[u8]| {
    rewrite_target::run(Kind::Hls, "master.m3u8", data, rewrite_target::rewriter);
});
