//! Canonical paths (spec §3.1): one spelling per object, so no two URLs that differ in meaning share a MAC.

use std::borrow::Cow;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};

/// Longest canonical path, in bytes: the S3 key limit.
pub const MAX_PATH_LEN: usize = 1024;

/// Whether a path names one object or a folder that a prefix token opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    /// One object: no trailing `/`.
    Path,
    /// A folder: ends in `/`.
    Prefix,
}

/// Why a path is not acceptable. An agent answers these with 400 and never reads storage.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path must start with '/'")]
    NoLeadingSlash,
    #[error("the path has a '%' that is not followed by two hex digits")]
    BadEscape,
    #[error("the path does not decode to valid UTF-8")]
    NotUtf8,
    #[error("the path contains a control character or a backslash")]
    ForbiddenCharacter,
    #[error("the path has an empty segment ('//')")]
    EmptySegment,
    #[error("the path has a '.' or '..' segment")]
    DotSegment,
    #[error("a prefix must end with '/'")]
    PrefixWithoutSlash,
    #[error("the path is longer than {MAX_PATH_LEN} bytes once decoded")]
    TooLong,
}

/// Canonical form of a raw (percent-encoded) request path that names one object.
pub fn canonical_path(raw: &str) -> Result<Cow<'_, str>, PathError> {
    canonicalize(raw, PathKind::Path)
}

/// Canonical form of a raw (percent-encoded) prefix; it must end in `/`.
pub fn canonical_prefix(raw: &str) -> Result<Cow<'_, str>, PathError> {
    canonicalize(raw, PathKind::Prefix)
}

pub(crate) fn canonicalize(raw: &str, kind: PathKind) -> Result<Cow<'_, str>, PathError> {
    if !raw.starts_with('/') {
        return Err(PathError::NoLeadingSlash);
    }
    check_escapes(raw)?;
    let decoded: Cow<'_, str> = match percent_decode_str(raw).into() {
        Cow::Borrowed(b) => Cow::Borrowed(std::str::from_utf8(b).map_err(|_| PathError::NotUtf8)?),
        Cow::Owned(v) => Cow::Owned(String::from_utf8(v).map_err(|_| PathError::NotUtf8)?),
    };
    check_canonical(&decoded, kind)?;
    Ok(decoded)
}

/// `percent_decode_str` leaves a malformed escape as it is; the spec makes it an error instead.
fn check_escapes(raw: &str) -> Result<(), PathError> {
    let b = raw.as_bytes();
    let mut i = 0;
    while let Some(off) = b[i..].iter().position(|&c| c == b'%') {
        let at = i + off;
        match b.get(at + 1..at + 3) {
            Some([h, l]) if h.is_ascii_hexdigit() && l.is_ascii_hexdigit() => i = at + 3,
            _ => return Err(PathError::BadEscape),
        }
    }
    Ok(())
}

/// Checks that an already decoded path is canonical: what signers are given and what tokens carry.
pub fn check_canonical(path: &str, kind: PathKind) -> Result<(), PathError> {
    let rest = path.strip_prefix('/').ok_or(PathError::NoLeadingSlash)?;
    if path.len() > MAX_PATH_LEN {
        return Err(PathError::TooLong);
    }
    if path.bytes().any(|c| c < 0x20 || c == 0x7f || c == b'\\') {
        return Err(PathError::ForbiddenCharacter);
    }
    let body = match kind {
        PathKind::Path => rest,
        PathKind::Prefix if rest.is_empty() => return Ok(()),
        PathKind::Prefix => rest.strip_suffix('/').ok_or(PathError::PrefixWithoutSlash)?,
    };
    for segment in body.split('/') {
        match segment {
            "" => return Err(PathError::EmptySegment),
            "." | ".." => return Err(PathError::DotSegment),
            _ => {}
        }
    }
    Ok(())
}

/// Bytes a signer leaves as they are in a URL path: the unreserved set and `/` (spec §3.2).
const PATH_KEEP: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~').remove(b'/');

/// Percent-encodes a canonical path for a URL, the same way every signer does.
pub fn encode_path(canonical: &str) -> impl std::fmt::Display + '_ {
    utf8_percent_encode(canonical, PATH_KEEP)
}
