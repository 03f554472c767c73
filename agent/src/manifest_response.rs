//! Answers with a rewritten HLS playlist or DASH manifest (spec §5.6).
//!
//! Its bytes depend on the token that fetched it and on the Host it was asked for, so it gets its own ETag over
//! both, `Cache-Control: private, no-cache` and `Vary: Authorization, Cookie`; it ignores Range (RFC 9110 §14.2
//! lets a server send the whole representation) and carries a Content-Length only when the rewrite fits in the
//! first 64 KiB; longer ones stream.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::{StreamExt, TryStreamExt};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use sha2::{Digest, Sha256};
use vd_token::{Claims, Scope, Via};

use crate::conditional::{not_modified, preconditions_hold};
use crate::manifest::{self, Grant, PrefixRequired, Rewriter};
use crate::refusal::{Refusal, empty, set};
use crate::server::{Body, Failure, Guard, Metered, State, content_type_for, request_host, stream_permit};
use crate::storage::StorageError;

/// The grant a rewrite passes on: never more than `presented` opens, never longer (spec §5.6).
fn grant(signer: &Arc<vd_token::Signer>, presented: &Claims) -> Grant {
    let derived = |scope| Claims {
        kid: signer.kid().to_owned(),
        exp: presented.exp,
        nbf: None,
        scope,
        ip: presented.ip,
        via: Some(Via::Manifest),
    };
    match &presented.scope {
        Scope::Prefix(p) => Grant::Prefix { scope: p.clone(), token: signer.token(&derived(Scope::Prefix(p.clone()))) },
        Scope::Path(_) => {
            let signer = signer.clone();
            let template = derived(Scope::Path(String::new()));
            Grant::Exact {
                mint: Arc::new(move |path: &str| {
                    signer.token(&Claims { scope: Scope::Path(path.to_owned()), ..template.clone() })
                }),
            }
        }
    }
}

pub async fn serve<B>(
    state: &State,
    req: &Request<B>,
    object: &str,
    raw_path: &str,
    kind: manifest::Kind,
    presented: &Claims,
) -> Result<Response<Body>, Failure> {
    let signer = state.auth.signer().ok_or(Refusal::NoActiveKey)?;
    let host = request_host(req).unwrap_or("localhost");
    let rewriter = Rewriter::new(host, raw_path, grant(&signer, presented)).ok_or(Refusal::BadHost)?;

    let meta = state.meta.get(&state.storage, object, &state.metrics).await.map_err(Refusal::Storage)?;
    let etag = meta.etag.as_deref().map(|tag| {
        let mut h = Sha256::new();
        for part in [signer.kid(), &presented.claims_text(), host] {
            h.update(part.as_bytes());
            h.update(b"\n");
        }
        let short = u64::from_be_bytes(h.finalize()[..8].try_into().expect("SHA-256 has 32 bytes"));
        format!("\"{}-vd{short:016x}\"", tag.trim_start_matches("W/").trim_matches('"'))
    });
    let mut headers = HeaderMap::new();
    if let Some(tag) = &etag {
        set(&mut headers, header::ETAG, tag);
    }
    headers.insert(header::LAST_MODIFIED, meta.last_modified_header.clone());
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, no-cache"));
    headers.insert(header::VARY, HeaderValue::from_static("Authorization, Cookie"));
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("none"));
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type_for(object)));
    if !preconditions_hold(req.headers(), etag.as_deref(), &meta) {
        return Err(Refusal::PreconditionFailed.into());
    }
    if not_modified(req.headers(), etag.as_deref(), &meta) {
        let mut r = Response::new(empty());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        *r.headers_mut() = headers;
        return Ok(r);
    }
    let mut resp = Response::new(empty());
    // HEAD runs the rewrite too (its body is dropped in `handle`), so it reports the same Content-Length as GET.
    if meta.size == 0 {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
        *resp.headers_mut() = headers;
        return Ok(resp);
    }
    let permit = stream_permit(state)?;
    let (opened, _) = state.cache.read(&state.storage, object, meta.etag.as_deref(), meta.size, 0..meta.size).await?;
    let source = opened.stream.map_err(std::io::Error::other).boxed();
    let mut rewritten = Box::pin(manifest::rewrite(kind, rewriter, source));
    let mut head = BytesMut::new();
    let mut complete = false;
    while head.len() < 64 * 1024 {
        match rewritten.next().await {
            Some(Ok(chunk)) => head.extend_from_slice(&chunk),
            Some(Err(e)) if e.get_ref().is_some_and(|e| e.is::<PrefixRequired>()) => {
                return Err(Refusal::PrefixRequired.into());
            }
            Some(Err(e)) => return Err(Refusal::BadManifest(e.to_string()).into()),
            None => {
                complete = true;
                break;
            }
        }
    }
    let head = head.freeze();
    let stream: futures::stream::BoxStream<'static, Result<Bytes, StorageError>> = if complete {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(head.len() as u64));
        futures::stream::once(async move { Ok(head) }).boxed()
    } else {
        // Past the first 64 KiB a refusal can no longer be a status: the body is cut, so the player sees a broken
        // manifest rather than one that is silently missing its tokens.
        let rest = rewritten.map_err(|e| StorageError::Unavailable(e.to_string()));
        futures::stream::once(async move { Ok(head) }).chain(rest).boxed()
    };
    let body = Metered::new(stream, Guard::new(permit, state.metrics.clone()), state.metrics.clone());
    *resp.body_mut() = BodyExt::boxed_unsync(StreamBody::new(body));
    *resp.headers_mut() = headers;
    Ok(resp)
}
