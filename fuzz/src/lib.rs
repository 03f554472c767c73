//! Shared pieces of the fuzz targets: how an input's bytes are cut into fields, and the property checks for
//! rewritten manifests (which read the output the way a player would, independently of the rewriter's own logic).

pub mod manifest_check;

/// Splits an input into a fixed-size control header (zero-padded when the input is short) and the text after it.
/// Seeds written by `scripts/fuzz.sh` use the same layout, so they stay meaningful to every target.
pub fn split_header<const N: usize>(data: &[u8]) -> ([u8; N], &[u8]) {
    let mut header = [0u8; N];
    let n = data.len().min(N);
    header[..n].copy_from_slice(&data[..n]);
    (header, &data[n..])
}

/// The text of an input, lossily: the APIs under test take `&str`, and a `U+FFFD` is as good a byte as any.
pub fn text(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(bytes)
}

pub mod rewrite_target {
    //! The common body of the `hls_rewrite` and `dash_rewrite` targets. Each target keeps the one call that
    //! builds a `Rewriter` in its own small helper, passed in here as `build`.

    use std::io;
    use std::sync::LazyLock;

    use bytes::Bytes;
    use futures::StreamExt;
    use url::Url;
    use videodelivery_agent::manifest::{self, Kind, Rewriter};

    use crate::manifest_check::{self, GrantKind, Request};

    /// Request authorities: a name, a name with a port, an IPv4 address with a port, an IPv6 literal.
    const HOSTS: [&str; 4] = ["media.example", "media.example:8080", "127.0.0.1:8443", "[::1]"];
    /// How the manifest is cut into the stream's chunks: the rewrite must not care.
    const PIECES: [usize; 4] = [usize::MAX, 1, 7, 64];
    /// The manifest's folder as requested, and the prefix scope a prefix token grants.
    const PATHS: [(&str, &str); 4] = [
        ("/videos/film/", "/videos/film/"),
        ("/videos/film/", "/"),
        ("/", "/"),
        ("/videos/caf%C3%A9/", "/videos/café/"),
    ];

    static RUNTIME: LazyLock<tokio::runtime::Runtime> =
        LazyLock::new(|| tokio::runtime::Builder::new_current_thread().build().expect("a current-thread runtime"));

    /// Input: one control byte, then the manifest. Control bits: 0-1 host, 2-3 chunking, 4 exact grant (else
    /// prefix), 5-6 path and scope.
    /// The one place a `Rewriter` is built: adapt this when `manifest::Rewriter::new` changes. The tokens it
    /// appends are the checker's markers, so every added token can be found and judged.
    pub fn rewriter(host: &str, raw_path: &str, grant: &GrantKind) -> Option<Rewriter> {
        let grant = match grant {
            GrantKind::Prefix { scope } => {
                manifest::Grant::Prefix { scope: scope.clone(), token: manifest_check::prefix_token() }
            }
            GrantKind::Exact { folder } => {
                let folder = folder.clone();
                manifest::Grant::Exact {
                    mint: std::sync::Arc::new(move |path: &str| {
                        assert!(path.starts_with(&folder), "asked to mint a token for {path:?} outside {folder:?}");
                        manifest_check::exact_token(path)
                    }),
                }
            }
        };
        Rewriter::new(host, raw_path, grant)
    }

    pub fn run(kind: Kind, name: &str, data: &[u8], build: fn(&str, &str, &GrantKind) -> Option<Rewriter>) {
        let ([c], body) = crate::split_header::<1>(data);
        let host = HOSTS[usize::from(c & 3)];
        let piece = PIECES[usize::from((c >> 2) & 3)];
        let (dir, scope) = PATHS[usize::from((c >> 5) & 3)];
        let raw_path = format!("{dir}{name}");
        let grant = if c & 0x10 == 0 {
            GrantKind::Prefix { scope: scope.to_owned() }
        } else {
            let path = vd_token::canonical_path(&raw_path).expect("the fixed paths are canonical");
            GrantKind::Exact { folder: path[..=path.rfind('/').expect("a leading slash")].to_owned() }
        };
        let rewriter = build(host, &raw_path, &grant).expect("the rewriter refused a well-formed request");

        let chunks: Vec<io::Result<Bytes>> =
            body.chunks(piece.min(body.len().max(1))).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
        let results: Vec<io::Result<Bytes>> =
            RUNTIME.block_on(manifest::rewrite(kind, rewriter, futures::stream::iter(chunks).boxed()).collect());
        // What a client receives: every chunk up to the first error (hyper then aborts the body).
        let mut output = Vec::new();
        let mut error = None;
        for r in results {
            match r {
                Ok(b) => output.extend_from_slice(&b),
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
        }

        let req = Request { base: Url::parse(&format!("http://{host}{raw_path}")).expect("a valid base"), grant };
        match kind {
            Kind::Hls => {
                // A playlist is refused only when it is not UTF-8 or has a line over 64 KiB.
                if let Some(e) = &error
                    && std::str::from_utf8(body).is_ok()
                    && body.split(|&b| b == b'\n').all(|l| l.len() < 64 * 1024)
                {
                    panic!("a UTF-8 playlist with short lines was refused: {e}");
                }
                manifest_check::check_hls(&req, body, &output, error.is_none());
            }
            Kind::Dash => manifest_check::check_dash(&req, body, &output),
        }
    }
}
