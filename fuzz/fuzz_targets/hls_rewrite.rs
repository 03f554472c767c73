//! HLS playlist rewriting (`videodelivery_agent::manifest`, kind `Hls`) on arbitrary bytes.
//!
//! Input: one control byte (host, how the body is cut into stream chunks, grant kind, manifest path), then the
//! playlist. Properties: never panics; the output is the input with `token=` insertions only; every added token is
//! on a URI that resolves to the request's host and port; a minted (exact) token names the path the player fetches.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use vd_fuzz::manifest_check::{self, GrantKind};
use videodelivery_agent::manifest::{Grant, Rewriter};

/// The one place a `Rewriter` is built: adapt this call when `manifest::Rewriter::new` changes.
fn rewriter(host: &str, raw_path: &str, grant: &GrantKind) -> Option<Rewriter> {
    let grant = match grant {
        GrantKind::Prefix { scope } => Grant::Prefix { scope: scope.clone(), token: manifest_check::prefix_token() },
        GrantKind::Exact { folder } => {
            let folder = folder.clone();
            Grant::Exact {
                mint: Arc::new(move |path: &str| {
                    assert!(path.starts_with(&folder), "asked to mint a token for {path:?} outside {folder:?}");
                    manifest_check::exact_token(path)
                }),
            }
        }
    };
    Rewriter::new(host, raw_path, grant)
}

fuzz_target!(|data: &[u8]| {
    vd_fuzz::rewrite_target::run(videodelivery_agent::manifest::Kind::Hls, "master.m3u8", data, rewriter);
});
