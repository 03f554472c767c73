//! DASH manifest rewriting (`videodelivery_agent::manifest`, kind `Dash`) on arbitrary bytes.
//!
//! Input: one control byte (host, how the body is cut into stream chunks, grant kind, manifest path), then the
//! manifest. Properties: never panics; every added token sits in a URI attribute, and every URL a player may build
//! from it (BaseURLs at every level, inherited templates, identifiers filled in) is on the request's host and port.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vd_fuzz::rewrite_target;
use videodelivery_agent::manifest::Kind;

fuzz_target!(|data: &[u8]| {
    rewrite_target::run(Kind::Dash, "manifest.mpd", data, rewrite_target::rewriter);
});
