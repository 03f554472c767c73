//! Manifest rewriting (spec §5.6): HLS playlists and DASH manifests whose URIs each carry a prefix token.
//!
//! Players resolve a playlist's relative URIs against its URL but drop its query string, so a token on the playlist
//! never reaches the segments. The agent appends `token=` to every URI that resolves to its own host and inside the
//! token's scope, and leaves everything else byte for byte as it was. The rewrite streams: HLS a line at a time,
//! DASH an XML event at a time; neither holds more than one line or element beyond the output chunk.

use std::borrow::Cow;
use std::io;

use bytes::{Bytes, BytesMut};
use futures::Stream;
use futures::stream::BoxStream;
use quick_xml::events::{BytesStart, Event};
use tokio::io::AsyncBufReadExt;
use url::Url;

/// Output is handed to hyper in chunks of about this size.
const CHUNK: usize = 16 * 1024;
/// Longest HLS line or DASH element accepted; a manifest with a longer one is not a manifest. It is enforced while
/// reading, so no item is ever buffered beyond it.
const MAX_ITEM: usize = 64 * 1024;
/// Deepest DASH element nesting accepted (an MPD has five or six levels).
const MAX_DEPTH: usize = 32;
/// The rewrite may grow a manifest by at most this factor (plus one output chunk): tokens on very short lines would
/// otherwise turn a 2 MB playlist into a 126 MB answer.
const MAX_GROWTH: u64 = 32;

/// Which manifest format an object is, by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Hls,
    Dash,
}

impl Kind {
    pub fn of(object: &str) -> Option<Kind> {
        let ext = object.rsplit_once('.')?.1;
        if ext.eq_ignore_ascii_case("m3u8") {
            Some(Kind::Hls)
        } else if ext.eq_ignore_ascii_case("mpd") {
            Some(Kind::Dash)
        } else {
            None
        }
    }
}

/// Query parameters that already carry a token (spec §5.3); a URI with one is left alone.
const CARRIER_PARAMS: [&str; 5] = ["token", "key", "expires", "kid", "signature"];

/// What the tokens a rewrite appends may open: never more than the token that fetched the manifest (spec §5.6).
#[derive(Clone)]
pub enum Grant {
    /// A prefix token was presented: every URI inside `scope` gets `token`, a token for that same prefix.
    Prefix { scope: String, token: String },
    /// A path token named the manifest alone: each URI inside the manifest's folder gets a token for its exact
    /// path, minted by `mint`. A DASH template names many paths, so it needs a prefix token instead.
    Exact { mint: std::sync::Arc<dyn Fn(&str) -> String + Send + Sync> },
}

impl std::fmt::Debug for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Grant::Prefix { scope, .. } => f.debug_struct("Prefix").field("scope", scope).finish_non_exhaustive(),
            Grant::Exact { .. } => f.write_str("Exact"),
        }
    }
}

/// A DASH manifest uses a `SegmentTemplate`, which only a prefix token can open, and a path token was presented.
#[derive(Debug, thiserror::Error)]
#[error("the manifest uses SegmentTemplate, which names many segments: sign a prefix token for its folder")]
pub struct PrefixRequired;

/// Decides, URI by URI, whether to append a token and which.
#[derive(Debug, Clone)]
pub struct Rewriter {
    /// The manifest's own URL (scheme `http`, the request's host), what relative URIs resolve against.
    base: Url,
    /// The canonical prefix a URI must fall in: the grant's prefix, or the manifest's folder for exact tokens.
    scope: String,
    grant: Grant,
}

/// Characters after which a URI is not resolved the same way by every player (WHATWG URL parsers, Safari's
/// RFC 3986 one, HLS variable substitution): such a URI gets no token.
fn ambiguous(uri: &str) -> bool {
    uri.contains("{$") || uri.bytes().any(|c| c <= b' ' || c == 0x7f || c == b'\\')
}

impl Rewriter {
    /// `host` is the request's authority; `raw_path` the manifest's path as requested (canonical-able).
    pub fn new(host: &str, raw_path: &str, grant: Grant) -> Option<Rewriter> {
        let base = Url::parse(&format!("http://{host}{raw_path}")).ok()?;
        let scope = match &grant {
            Grant::Prefix { scope, .. } => scope.clone(),
            Grant::Exact { .. } => {
                let path = vd_token::canonical_path(raw_path).ok()?;
                path[..=path.rfind('/')?].to_owned()
            }
        };
        Some(Rewriter { base, scope, grant })
    }

    /// The URI with a token appended, or `None` to leave it as it is.
    pub fn uri(&self, uri: &str) -> Option<String> {
        self.uri_against(&self.base, uri, false).ok().flatten()
    }

    /// `uri` resolved against `base`; `template` for a DASH template (its `$…$` identifiers are filled in with
    /// numbers to resolve it, and only a prefix grant can open it).
    fn uri_against(&self, base: &Url, uri: &str, template: bool) -> Result<Option<String>, PrefixRequired> {
        if uri.is_empty() || ambiguous(uri) {
            return Ok(None);
        }
        let probe = if template { dash_probe(uri) } else { Cow::Borrowed(uri) };
        let Ok(target) = base.join(&probe) else { return Ok(None) };
        let same_origin = matches!(target.scheme(), "http" | "https")
            && target.host_str() == self.base.host_str()
            && target.port() == self.base.port();
        if !same_origin || target.query_pairs().any(|(k, _)| CARRIER_PARAMS.contains(&k.as_ref())) {
            return Ok(None);
        }
        let Ok(path) = vd_token::canonical_path(target.path()) else { return Ok(None) };
        if !path.starts_with(self.scope.as_str()) {
            return Ok(None);
        }
        let token = match &self.grant {
            Grant::Prefix { token, .. } => Cow::Borrowed(token.as_str()),
            Grant::Exact { .. } if template && uri.contains('$') => return Err(PrefixRequired),
            Grant::Exact { mint } => Cow::Owned(mint(&path)),
        };
        let (head, fragment) = match uri.split_once('#') {
            Some((h, f)) => (h, Some(f)),
            None => (uri, None),
        };
        let sep = match head.find('?') {
            None => "?",
            Some(_) if head.ends_with('?') || head.ends_with('&') => "",
            Some(_) => "&",
        };
        let mut out = String::with_capacity(uri.len() + token.len() + 8);
        out.push_str(head);
        out.push_str(sep);
        out.push_str("token=");
        out.push_str(&token);
        if let Some(f) = fragment {
            out.push('#');
            out.push_str(f);
        }
        Ok(Some(out))
    }

    /// One HLS line without its line end: a URI line, or a tag whose `URI="…"` attributes are rewritten.
    pub fn hls_line<'l>(&self, line: &'l str) -> Cow<'l, str> {
        // A line a player may split where this reader does not (hls.js ends lines at a lone CR, and tags at
        // U+2028 and U+2029) could turn the rest of a tag into a URI line: no token anywhere on it.
        if line.chars().any(|c| (c.is_control() && c != '\t') || c == '\u{2028}' || c == '\u{2029}') {
            return Cow::Borrowed(line);
        }
        let trimmed = line.trim();
        if trimmed.is_empty() {
            return Cow::Borrowed(line);
        }
        if !trimmed.starts_with('#') {
            // Players take the line without surrounding whitespace; the rewrite keeps that whitespace as it was.
            let Some(new) = self.uri(trimmed) else { return Cow::Borrowed(line) };
            let at = line.find(trimmed).unwrap_or(0);
            return Cow::Owned(format!("{}{new}{}", &line[..at], &line[at + trimmed.len()..]));
        }
        if !trimmed.starts_with("#EXT") {
            return Cow::Borrowed(line);
        }
        self.hls_attributes(line).map_or(Cow::Borrowed(line), Cow::Owned)
    }

    /// A tag's attribute list (RFC 8216 §4.2) read pair by pair, `NAME=VALUE` separated by commas, a quoted value
    /// never holding a quote: the values of attributes named exactly `URI` get the token. `None` leaves the line
    /// as it is: nothing to change, or not an attribute list this reader is sure of.
    fn hls_attributes(&self, line: &str) -> Option<String> {
        let colon = line.find(':')?;
        let tag = &line[..colon];
        if !tag.starts_with("#EXT")
            || !tag[1..].bytes().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == b'-')
        {
            return None;
        }
        let mut out = String::with_capacity(line.len() + 256);
        out.push_str(&line[..=colon]);
        let mut rest = &line[colon + 1..];
        let mut changed = false;
        loop {
            let eq = rest.find('=')?;
            let name = &rest[..eq];
            if name.is_empty() || !name.bytes().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == b'-') {
                return None;
            }
            let after = &rest[eq + 1..];
            let end = match after.strip_prefix('"') {
                Some(quoted) => quoted.find('"')? + 2,
                None => after.find(',').unwrap_or(after.len()),
            };
            let (value, tail) = after.split_at(end);
            // A quote inside an unquoted value: players disagree on where the next attribute starts.
            if !value.starts_with('"') && value.contains('"') {
                return None;
            }
            out.push_str(name);
            out.push('=');
            let quoted = value.len() >= 2 && value.starts_with('"');
            match (name == "URI" && quoted).then(|| self.uri(&value[1..value.len() - 1])).flatten() {
                Some(new) => {
                    out.push('"');
                    out.push_str(&new);
                    out.push('"');
                    changed = true;
                }
                None => out.push_str(value),
            }
            if tail.is_empty() {
                break;
            }
            rest = tail.strip_prefix(',')?;
            out.push(',');
        }
        changed.then_some(out)
    }
}

/// A DASH template with each `$Identifier…$` replaced by `0`, so it can be resolved like a plain URI.
fn dash_probe(template: &str) -> Cow<'_, str> {
    if !template.contains('$') {
        return Cow::Borrowed(template);
    }
    let mut out = String::with_capacity(template.len());
    let mut parts = template.split('$');
    out.push_str(parts.next().unwrap_or_default());
    // Between each pair of `$` is an identifier (or nothing, for `$$`, a literal dollar).
    while let Some(ident) = parts.next() {
        out.push_str(if ident.is_empty() { "$" } else { "0" });
        out.push_str(parts.next().unwrap_or_default());
    }
    Cow::Owned(out)
}

/// DASH attributes that hold a URI or URI template.
/// The URI attributes DASH defines, by element (ISO/IEC 23009-1 §5.3.9): the same name on any other element is no URI
/// to a player, so it never gets a token.
fn dash_uri_attribute(element: &[u8], attr: &[u8]) -> bool {
    match element {
        b"SegmentTemplate" => matches!(attr, b"media" | b"initialization" | b"index"),
        b"SegmentURL" => matches!(attr, b"media" | b"index"),
        b"Initialization" | b"RepresentationIndex" | b"BitstreamSwitching" => attr == b"sourceURL",
        _ => false,
    }
}

/// The rewritten manifest as a stream of chunks. An error of kind `InvalidData` means the manifest is broken or
/// cannot be rewritten safely; one wrapping [`PrefixRequired`] means it needs a prefix token.
pub fn rewrite(
    kind: Kind,
    rewriter: Rewriter,
    source: BoxStream<'static, io::Result<Bytes>>,
) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    let reader = Budget::new(tokio_util::io::StreamReader::new(source));
    let state = match kind {
        Kind::Hls => State::Hls { reader, line: Vec::new() },
        Kind::Dash => {
            let root = Level {
                base: Some(rewriter.base.clone()),
                base_urls: 0,
                sealed: false,
                scope_of_segments: false,
                tokens_inherited: false,
            };
            State::Dash(Box::new(Dash {
                reader: quick_xml::Reader::from_reader(reader),
                buf: Vec::new(),
                tree: Tree { levels: vec![root], base_url: None },
            }))
        }
    };
    futures::stream::try_unfold((rewriter, state, false, 0u64), |(rw, mut state, done, sent)| async move {
        if done {
            return Ok(None);
        }
        let mut out = BytesMut::with_capacity(CHUNK + 1024);
        let finished = state.fill(&rw, &mut out).await?;
        if finished && out.is_empty() {
            return Ok(None);
        }
        let sent = sent + out.len() as u64;
        if sent > MAX_GROWTH * state.consumed() + CHUNK as u64 {
            return Err(invalid("the rewritten manifest would be more than 32 times its size"));
        }
        Ok(Some((out.freeze(), (rw, state, finished, sent))))
    })
}

/// A reader that refuses to hand out more than [`MAX_ITEM`] bytes between two [`Budget::reset`]s (one per line or
/// XML event), so a 50 MB attribute fails after 64 KiB instead of being buffered whole, and counts what it read.
struct Budget<R> {
    inner: R,
    used: usize,
    total: u64,
}

impl<R> Budget<R> {
    fn new(inner: R) -> Budget<R> {
        Budget { inner, used: 0, total: 0 }
    }

    fn reset(&mut self) {
        self.used = 0;
    }
}

impl<R: tokio::io::AsyncBufRead + Unpin> tokio::io::AsyncRead for Budget<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        out: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        use tokio::io::AsyncBufRead;
        let available = std::task::ready!(self.as_mut().poll_fill_buf(cx))?;
        let n = available.len().min(out.remaining());
        out.put_slice(&available[..n]);
        self.consume(n);
        std::task::Poll::Ready(Ok(()))
    }
}

impl<R: tokio::io::AsyncBufRead + Unpin> tokio::io::AsyncBufRead for Budget<R> {
    fn poll_fill_buf(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<&[u8]>> {
        let this = self.get_mut();
        let left = MAX_ITEM + 1 - this.used.min(MAX_ITEM + 1);
        if left == 0 {
            return std::task::Poll::Ready(Err(invalid("a manifest line or element is longer than 64 KiB")));
        }
        let buf = std::task::ready!(std::pin::Pin::new(&mut this.inner).poll_fill_buf(cx))?;
        std::task::Poll::Ready(Ok(&buf[..buf.len().min(left)]))
    }

    fn consume(mut self: std::pin::Pin<&mut Self>, amt: usize) {
        self.used += amt;
        self.total += amt as u64;
        std::pin::Pin::new(&mut self.inner).consume(amt);
    }
}

type Source = Budget<tokio_util::io::StreamReader<BoxStream<'static, io::Result<Bytes>>, Bytes>>;

enum State {
    Hls { reader: Source, line: Vec<u8> },
    Dash(Box<Dash>),
}

/// One open DASH element, as far as URI resolution is concerned.
struct Level {
    /// The base URL its children resolve against; `None` when no player-exact base is known (several
    /// `BaseURL`s, CDATA, an unknown entity, `xml:base`): nothing beneath gets a token.
    base: Option<Url>,
    /// `BaseURL` children seen so far.
    base_urls: u32,
    /// A child other than `BaseURL` has started, so URIs were already resolved against `base`.
    sealed: bool,
    /// A Period, AdaptationSet or Representation: segment information below it is inherited by every
    /// Representation under it, which players resolve against the Representation's own `BaseURL`s.
    scope_of_segments: bool,
    /// Segment information inherited from this element got a token: a `BaseURL` anywhere below must keep it on
    /// this host.
    tokens_inherited: bool,
}

struct Dash {
    reader: quick_xml::Reader<Source>,
    buf: Vec<u8>,
    tree: Tree,
}

/// Where the reader is in the element tree, and the base URL in effect there.
struct Tree {
    levels: Vec<Level>,
    /// Inside a `BaseURL`: its text so far, entities resolved, or `None` if it cannot be read exactly.
    base_url: Option<Option<String>>,
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_owned())
}

impl State {
    /// Bytes of the source read so far.
    fn consumed(&self) -> u64 {
        match self {
            State::Hls { reader, .. } => reader.total,
            State::Dash(dash) => dash.reader.get_ref().total,
        }
    }

    /// Appends about a chunk of rewritten output; `true` when the source is exhausted.
    async fn fill(&mut self, rw: &Rewriter, out: &mut BytesMut) -> io::Result<bool> {
        match self {
            State::Hls { reader, line } => fill_hls(reader, line, rw, out).await,
            State::Dash(dash) => dash.fill(rw, out).await,
        }
    }
}

async fn fill_hls(reader: &mut Source, line: &mut Vec<u8>, rw: &Rewriter, out: &mut BytesMut) -> io::Result<bool> {
    while out.len() < CHUNK {
        line.clear();
        reader.reset();
        let n = match reader.read_until(b'\n', line).await {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                return Err(invalid("a playlist line is longer than 64 KiB"));
            }
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Ok(true);
        }
        if line.len() > MAX_ITEM {
            return Err(invalid("a playlist line is longer than 64 KiB"));
        }
        let text = std::str::from_utf8(line).map_err(|_| invalid("the playlist is not UTF-8 (RFC 8216 §4.1)"))?;
        let body = text.trim_end_matches(['\n', '\r']);
        out.extend_from_slice(rw.hls_line(body).as_bytes());
        out.extend_from_slice(&text.as_bytes()[body.len()..]);
    }
    Ok(false)
}

impl Dash {
    async fn fill(&mut self, rw: &Rewriter, out: &mut BytesMut) -> io::Result<bool> {
        let Dash { reader, buf, tree } = self;
        let mut w = quick_xml::Writer::new(Vec::with_capacity(CHUNK + 1024));
        let xml = |e: quick_xml::Error| invalid(&format!("the manifest is not well-formed XML: {e}"));
        let finished = loop {
            if w.get_ref().len() >= CHUNK {
                break false;
            }
            if buf.len() > MAX_ITEM {
                return Err(invalid("a manifest element is longer than 64 KiB"));
            }
            buf.clear();
            reader.get_mut().reset();
            let event = reader.read_event_into_async(buf).await.map_err(xml)?;
            match event {
                Event::Eof => break true,
                Event::Start(e) => {
                    let e = tree.open(rw, e)?;
                    w.write_event(Event::Start(e))?;
                }
                Event::Empty(e) => {
                    let base_url = e.local_name().as_ref() == b"BaseURL";
                    let e = tree.open(rw, e)?;
                    tree.close(rw, base_url)?;
                    w.write_event(Event::Empty(e))?;
                }
                Event::End(e) => {
                    tree.close(rw, e.local_name().as_ref() == b"BaseURL")?;
                    w.write_event(Event::End(e))?;
                }
                // The reader hands text and each `&…;` reference as separate events.
                Event::Text(t) => {
                    if let Some(Some(text)) = tree.base_url.as_mut() {
                        match t.decode() {
                            Ok(piece) => text.push_str(&piece),
                            Err(_) => tree.base_url = Some(None),
                        }
                    }
                    w.write_event(Event::Text(t))?;
                }
                Event::GeneralRef(r) => {
                    if let Some(Some(text)) = tree.base_url.as_mut() {
                        match reference(&r) {
                            Some(c) => text.push_str(&c),
                            None => tree.base_url = Some(None),
                        }
                    }
                    w.write_event(Event::GeneralRef(r))?;
                }
                // CDATA is not read the same way by every player: a BaseURL holding some is no base at all.
                Event::CData(c) => {
                    if tree.base_url.is_some() {
                        tree.base_url = Some(None);
                    }
                    w.write_event(Event::CData(c))?;
                }
                // A DTD can define entities and defaults this reader does not apply: no URI gets a token.
                Event::DocType(d) => {
                    for level in &mut tree.levels {
                        level.base = None;
                    }
                    w.write_event(Event::DocType(d))?;
                }
                other => w.write_event(other)?,
            }
            if tree.base_url.as_ref().and_then(Option::as_ref).is_some_and(|t| t.len() > MAX_ITEM) {
                return Err(invalid("a manifest BaseURL is longer than 64 KiB"));
            }
        };
        out.extend_from_slice(w.get_ref());
        Ok(finished)
    }
}

impl Tree {
    /// An element starts: its URI attributes are rewritten against its parent's base, and it opens a level.
    fn open<'e>(&mut self, rw: &Rewriter, e: BytesStart<'e>) -> io::Result<BytesStart<'e>> {
        if self.levels.len() > MAX_DEPTH {
            return Err(invalid("the manifest nests elements deeper than 32 levels"));
        }
        if self.base_url.is_some() {
            // A BaseURL's value is its text; players differ on what an element inside it means. Refuse.
            return Err(invalid("a manifest element lies inside a BaseURL"));
        }
        let is_base_url = e.local_name().as_ref() == b"BaseURL";
        let parent = self.levels.last_mut().ok_or_else(|| invalid("unbalanced manifest"))?;
        if is_base_url {
            if parent.sealed {
                // URIs before it were resolved without it; a player may not have: refuse rather than guess.
                return Err(invalid("a BaseURL follows other elements in the manifest"));
            }
            self.base_url = Some(Some(String::new()));
        } else {
            parent.sealed = true;
        }
        let base = parent.base.clone();
        if e.local_name().as_ref() == b"Representation" {
            check_representation_id(&e)?;
        }
        let xml_base = e.attributes().flatten().any(|a| a.key.as_ref() == b"xml:base");
        let scope_of_segments = matches!(e.local_name().as_ref(), b"Period" | b"AdaptationSet" | b"Representation");
        let (e, tokens) = match &base {
            Some(base) => dash_element(rw, base, e)?,
            None => (e, false),
        };
        if tokens && let Some(owner) = self.levels.iter_mut().rev().find(|l| l.scope_of_segments) {
            owner.tokens_inherited = true;
        }
        let base = if xml_base { None } else { base };
        self.levels.push(Level { base, base_urls: 0, sealed: false, scope_of_segments, tokens_inherited: false });
        Ok(e)
    }

    /// An element ends. A `BaseURL` sets the base of the element that contains it, once its whole text is known;
    /// a second one makes that base unknown (players pick one and may fail over to another).
    fn close(&mut self, rw: &Rewriter, base_url: bool) -> io::Result<()> {
        self.levels.pop().ok_or_else(|| invalid("unbalanced manifest"))?;
        if !base_url {
            return Ok(());
        }
        let Some(text) = self.base_url.take() else { return Ok(()) };
        let inherited = self.levels.iter().any(|l| l.tokens_inherited);
        let Some(parent) = self.levels.last_mut() else { return Ok(()) };
        parent.base_urls += 1;
        parent.base = match (parent.base_urls, &parent.base, text) {
            (1, Some(base), Some(text)) if !ambiguous(text.trim()) => base.join(text.trim()).ok(),
            _ => None,
        };
        // Segment information above already carries a token, and players resolve it against this base too: it
        // must stay on this host, or the token would travel with it.
        let same_origin = |u: &Url| {
            u.scheme() == rw.base.scheme() && u.host_str() == rw.base.host_str() && u.port() == rw.base.port()
        };
        if inherited && !parent.base.as_ref().is_some_and(same_origin) {
            return Err(invalid("a BaseURL to another host lies below segment information that carries a token"));
        }
        Ok(())
    }
}

/// A `Representation@id` is pasted into `$RepresentationID$` templates unescaped: one holding URL syntax could move
/// a tokenised URI to another host, so such a manifest is not rewritten.
fn check_representation_id(e: &BytesStart<'_>) -> io::Result<()> {
    for attr in e.attributes().flatten() {
        if attr.key.as_ref() == b"id" && attr.value.iter().any(|&c| c <= b' ' || b"/\\:?#@%&$<>\"'[]{}|^`".contains(&c))
        {
            return Err(invalid("a Representation id holds URL syntax; the manifest is not rewritten"));
        }
    }
    Ok(())
}

/// What `&…;` stands for: a character reference or one of XML's five predefined entities (an MPD has no DTD).
fn reference(r: &quick_xml::events::BytesRef) -> Option<String> {
    if let Ok(Some(c)) = r.resolve_char_ref() {
        return Some(c.to_string());
    }
    quick_xml::escape::resolve_predefined_entity(&r.decode().ok()?).map(str::to_owned)
}

/// The element with its URI attributes rewritten, and whether any got a token. A rewritten element is written
/// anew, every attribute from its decoded value escaped again (a raw copy of a single-quoted value holding `"`
/// would break out of the double quotes it is written in); an element that cannot be decoded gets no token.
fn dash_element<'e>(rw: &Rewriter, base: &Url, e: BytesStart<'e>) -> io::Result<(BytesStart<'e>, bool)> {
    let mut changed = Vec::new();
    let template = e.local_name().as_ref() == b"SegmentTemplate";
    for attr in e.attributes() {
        let attr = attr.map_err(|err| invalid(&format!("bad attribute in the manifest: {err}")))?;
        if !dash_uri_attribute(e.local_name().as_ref(), attr.key.as_ref()) {
            continue;
        }
        let Ok(value) = attr.normalized_value(quick_xml::XmlVersion::Implicit1_0) else { continue };
        match rw.uri_against(base, &value, template) {
            Ok(Some(new)) => changed.push((attr.key.as_ref().to_vec(), new)),
            Ok(None) => {}
            Err(PrefixRequired) => return Err(io::Error::other(PrefixRequired)),
        }
    }
    if changed.is_empty() {
        return Ok((e, false));
    }
    let mut attrs = Vec::new();
    for attr in e.attributes() {
        let Ok(attr) = attr else { return Ok((e, false)) };
        let Ok(key) = std::str::from_utf8(attr.key.as_ref()) else { return Ok((e, false)) };
        let value = match changed.iter().find(|(k, _)| k.as_slice() == attr.key.as_ref()) {
            Some((_, v)) => v.clone(),
            None => match attr.normalized_value(quick_xml::XmlVersion::Implicit1_0) {
                Ok(v) => v.into_owned(),
                Err(_) => return Ok((e, false)),
            },
        };
        attrs.push((key.to_owned(), value));
    }
    let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
    let mut new = BytesStart::new(name);
    for (k, v) in &attrs {
        // `(&str, &str)` escapes the value; a byte pair would be written raw.
        new.push_attribute((k.as_str(), v.as_str()));
    }
    Ok((new.into_owned(), true))
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    const TOKEN: &str = "v1.abc.def";

    fn prefix(scope: &str) -> Grant {
        Grant::Prefix { scope: scope.to_owned(), token: TOKEN.to_owned() }
    }

    fn rw() -> Rewriter {
        Rewriter::new("media.example:8080", "/videos/film/master.m3u8", prefix("/videos/film/")).unwrap()
    }

    #[test]
    fn relative_uris_get_the_token() {
        let r = rw();
        assert_eq!(r.uri("720p/index.m3u8").as_deref(), Some("720p/index.m3u8?token=v1.abc.def"));
        assert_eq!(r.uri("seg%201.ts").as_deref(), Some("seg%201.ts?token=v1.abc.def"));
        assert_eq!(r.uri("./a/../b.ts").as_deref(), Some("./a/../b.ts?token=v1.abc.def"));
    }

    #[test]
    fn query_and_fragment_are_kept() {
        let r = rw();
        assert_eq!(r.uri("seg1.ts?v=2").as_deref(), Some("seg1.ts?v=2&token=v1.abc.def"));
        assert_eq!(r.uri("seg1.ts?").as_deref(), Some("seg1.ts?token=v1.abc.def"));
        assert_eq!(r.uri("seg1.ts?v=2#t=10").as_deref(), Some("seg1.ts?v=2&token=v1.abc.def#t=10"));
    }

    #[test]
    fn absolute_uris_on_this_host_get_the_token_others_do_not() {
        let r = rw();
        assert_eq!(r.uri("/videos/film/a.ts").as_deref(), Some("/videos/film/a.ts?token=v1.abc.def"));
        assert_eq!(
            r.uri("http://media.example:8080/videos/film/a.ts").as_deref(),
            Some("http://media.example:8080/videos/film/a.ts?token=v1.abc.def")
        );
        assert_eq!(r.uri("https://cdn.other.example/videos/film/a.ts"), None, "another host never sees the token");
        assert_eq!(r.uri("//cdn.other.example/videos/film/a.ts"), None);
        assert_eq!(r.uri("http://media.example:9999/videos/film/a.ts"), None, "another port is another origin");
        assert_eq!(r.uri("data:text/plain,hi"), None);
        assert_eq!(r.uri("skd://key-id"), None);
    }

    #[test]
    fn absolute_https_uris_on_this_host_get_the_token_behind_a_tls_gateway_or_with_the_agents_own_tls() {
        // The agent sees the Host the viewer asked for; the manifest may name that host with https.
        let r = Rewriter::new("gw.example.test:8443", "/videos/film/master.m3u8", prefix("/videos/film/")).unwrap();
        assert_eq!(
            r.uri("https://gw.example.test:8443/videos/film/a.m4s").as_deref(),
            Some("https://gw.example.test:8443/videos/film/a.m4s?token=v1.abc.def")
        );
        let r = Rewriter::new("media.example", "/videos/film/master.m3u8", prefix("/videos/film/")).unwrap();
        assert_eq!(
            r.uri("https://media.example/videos/film/a.m4s").as_deref(),
            Some("https://media.example/videos/film/a.m4s?token=v1.abc.def"),
            "the default port of either scheme"
        );
        assert_eq!(r.uri("https://media.example.evil/videos/film/a.m4s"), None);
        assert_eq!(r.uri("https://media.example:8443/videos/film/a.m4s"), None, "another port");
        assert_eq!(r.uri("https://media.example/videos/other/a.m4s"), None, "outside the grant");
    }

    #[test]
    fn uris_outside_the_scope_or_already_signed_are_left() {
        let r = rw();
        assert_eq!(r.uri("../other/a.ts"), None);
        assert_eq!(r.uri("/videos/film2/a.ts"), None);
        assert_eq!(r.uri("a.ts?token=v1.x.y"), None);
        assert_eq!(r.uri("a.ts?expires=1&kid=k&signature=s"), None);
        assert_eq!(r.uri("a%2F..%2F..%2Fb.ts"), None, "an encoded climb is not a valid path");
        assert_eq!(r.uri(""), None);
    }

    #[test]
    fn hls_tags_with_uri_attributes() {
        let r = rw();
        let key = r#"#EXT-X-KEY:METHOD=AES-128,URI="key.bin",IV=0x1"#;
        assert_eq!(r.hls_line(key), r#"#EXT-X-KEY:METHOD=AES-128,URI="key.bin?token=v1.abc.def",IV=0x1"#);
        let map = r#"#EXT-X-MAP:URI="init.mp4",BYTERANGE="720@0""#;
        assert_eq!(r.hls_line(map), r#"#EXT-X-MAP:URI="init.mp4?token=v1.abc.def",BYTERANGE="720@0""#);
        let media = r#"#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="a",NAME="en",URI="audio/en.m3u8""#;
        assert_eq!(
            r.hls_line(media),
            r#"#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="a",NAME="en",URI="audio/en.m3u8?token=v1.abc.def""#
        );
        let foreign = r#"#EXT-X-KEY:METHOD=SAMPLE-AES,URI="skd://abc",KEYFORMAT="com.apple.streamingkeydelivery""#;
        assert_eq!(r.hls_line(foreign), foreign);
        let not_an_attr = r#"#EXT-X-SESSION-DATA:DATA-ID="x",VALUE="SOURCEURI=\"a.ts\"""#;
        assert_eq!(r.hls_line(not_an_attr), not_an_attr, "only an attribute named URI counts");
        assert_eq!(r.hls_line("#EXTINF:4.0,"), "#EXTINF:4.0,");
        assert_eq!(r.hls_line("# a comment with URI=\"x.ts\""), "# a comment with URI=\"x.ts\"");
        assert_eq!(r.hls_line("#EXT-X-BYTERANGE:1000@0"), "#EXT-X-BYTERANGE:1000@0");
    }

    #[test]
    fn dash_templates_are_resolved_with_identifiers_filled_in() {
        assert_eq!(dash_probe("chunk-$RepresentationID$-$Number%05d$.m4s"), "chunk-0-0.m4s");
        assert_eq!(dash_probe("a$$b"), "a$b");
        let r = Rewriter::new("h", "/videos/film/manifest.mpd", prefix("/videos/film/")).unwrap();
        let base = r.base.clone();
        let t = "chunk-$RepresentationID$-$Number%05d$.m4s";
        assert_eq!(
            r.uri_against(&base, t, true).unwrap().as_deref(),
            Some("chunk-$RepresentationID$-$Number%05d$.m4s?token=v1.abc.def")
        );
    }

    async fn run(kind: Kind, r: Rewriter, input: &'static str, piece: usize) -> String {
        let chunks: Vec<io::Result<Bytes>> =
            input.as_bytes().chunks(piece).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
        let out: Vec<io::Result<Bytes>> = rewrite(kind, r, futures::stream::iter(chunks).boxed()).collect().await;
        let out: Vec<Bytes> = out.into_iter().collect::<io::Result<_>>().unwrap();
        String::from_utf8(out.concat()).unwrap()
    }

    const MEDIA_PLAYLIST: &str = "#EXTM3U\r\n#EXT-X-VERSION:7\r\n#EXT-X-MAP:URI=\"init.mp4\"\r\n#EXTINF:2.0,\r\n\
        seg0.m4s\r\n#EXT-X-BYTERANGE:500@0\r\n#EXTINF:2.0,\r\nall.m4s\r\n#EXTINF:2.0,\r\n\
        https://other.example/ad.m4s\r\n#EXT-X-ENDLIST";

    #[tokio::test]
    async fn hls_stream_keeps_line_ends_and_splits_anywhere() {
        let want = MEDIA_PLAYLIST
            .replace("init.mp4", "init.mp4?token=v1.abc.def")
            .replace("seg0.m4s", "seg0.m4s?token=v1.abc.def")
            .replace("all.m4s", "all.m4s?token=v1.abc.def");
        for piece in [1, 3, 7, 1000] {
            assert_eq!(run(Kind::Hls, rw(), MEDIA_PLAYLIST, piece).await, want, "input in pieces of {piece}");
        }
    }

    #[tokio::test]
    async fn hls_rejects_a_line_longer_than_the_bound() {
        let long: &'static str = Box::leak(format!("#EXTM3U\n{}\n", "a".repeat(MAX_ITEM + 10)).into_boxed_str());
        let chunks = vec![Ok(Bytes::from_static(long.as_bytes()))];
        let out: Vec<io::Result<Bytes>> =
            rewrite(Kind::Hls, rw(), futures::stream::iter(chunks).boxed()).collect().await;
        assert!(out.iter().any(|c| c.as_ref().is_err_and(|e| e.kind() == io::ErrorKind::InvalidData)));
    }

    const MPD: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static" mediaPresentationDuration="PT6S">
  <!-- made by a test -->
  <Period id="0" start="PT0S">
    <AdaptationSet id="0" contentType="video" segmentAlignment="true">
      <Representation id="0" mimeType="video/mp4" codecs="avc1.64001e" bandwidth="300000" width="320" height="180">
        <SegmentTemplate timescale="12800" initialization="init-stream$RepresentationID$.m4s" media="chunk-stream$RepresentationID$-$Number%05d$.m4s" startNumber="1" duration="25600"/>
      </Representation>
    </AdaptationSet>
    <AdaptationSet id="1" contentType="audio">
      <BaseURL>audio/</BaseURL>
      <Representation id="1" mimeType="audio/mp4" bandwidth="64000">
        <SegmentList duration="2"><Initialization sourceURL="init.mp4"/><SegmentURL media="a1.m4s" mediaRange="0-99"/></SegmentList>
      </Representation>
    </AdaptationSet>
    <AdaptationSet id="2" contentType="text">
      <BaseURL>https://subs.other.example/</BaseURL>
      <Representation id="2" mimeType="text/vtt" bandwidth="100"><SegmentTemplate media="sub-$Number$.vtt"/></Representation>
    </AdaptationSet>
  </Period>
</MPD>
"#;

    #[tokio::test]
    async fn dash_uri_attributes_get_the_token_within_scope_and_host() {
        let r = Rewriter::new("media.example", "/videos/film/manifest.mpd", prefix("/videos/film/")).unwrap();
        for piece in [5, 4096] {
            let out = run(Kind::Dash, r.clone(), MPD, piece).await;
            assert!(out.contains(r#"initialization="init-stream$RepresentationID$.m4s?token=v1.abc.def""#), "{out}");
            assert!(out.contains(r#"media="chunk-stream$RepresentationID$-$Number%05d$.m4s?token=v1.abc.def""#));
            assert!(out.contains(r#"sourceURL="init.mp4?token=v1.abc.def""#), "{out}");
            assert!(out.contains(r#"media="a1.m4s?token=v1.abc.def" mediaRange="0-99""#), "{out}");
            assert!(out.contains(r#"media="sub-$Number$.vtt""#), "a BaseURL on another host keeps the token away");
            assert!(out.contains("<!-- made by a test -->") && out.contains("<BaseURL>audio/</BaseURL>"));
            assert!(out.starts_with(r#"<?xml version="1.0" encoding="utf-8"?>"#));
        }
        // A scope that does not cover the audio folder leaves its URIs alone.
        let narrow =
            Rewriter::new("media.example", "/videos/film/manifest.mpd", prefix("/videos/film/video/")).unwrap();
        let out = run(Kind::Dash, narrow, MPD, 4096).await;
        assert!(!out.contains("token="), "{out}");
    }

    #[tokio::test]
    async fn dash_base_urls_are_read_with_their_entities() {
        let mpd = r#"<MPD><Period>
<AdaptationSet><BaseURL>https://cdn.example/films?a=1&amp;b=2/</BaseURL><SegmentTemplate media="v-$Number$.m4s"/></AdaptationSet>
<AdaptationSet><BaseURL>au&#100;io/</BaseURL><SegmentList><SegmentURL media="a1.m4s"/></SegmentList></AdaptationSet>
</Period></MPD>"#;
        // Only the audio folder is in scope: its BaseURL has to be read whole, `&#100;` included.
        let r = Rewriter::new("media.example", "/videos/film/manifest.mpd", prefix("/videos/film/audio/")).unwrap();
        for piece in [3, 4096] {
            let out = run(Kind::Dash, r.clone(), mpd, piece).await;
            assert!(out.contains(r#"<SegmentURL media="a1.m4s?token=v1.abc.def"/>"#), "{out}");
            assert!(out.contains(r#"media="v-$Number$.m4s""#), "a BaseURL on another host, after `&amp;`: {out}");
            assert!(out.contains("films?a=1&amp;b=2/") && out.contains("au&#100;io/"), "references kept: {out}");
        }
    }

    #[tokio::test]
    async fn dash_refuses_a_base_url_beyond_the_bound_even_in_small_pieces() {
        let long: &'static str =
            Box::leak(format!("<MPD><BaseURL>{}</BaseURL></MPD>", "a&amp;".repeat(MAX_ITEM / 2 + 1)).into_boxed_str());
        let chunks = vec![Ok(Bytes::from_static(long.as_bytes()))];
        let out: Vec<io::Result<Bytes>> =
            rewrite(Kind::Dash, rw(), futures::stream::iter(chunks).boxed()).collect().await;
        assert!(out.iter().any(|c| c.as_ref().is_err_and(|e| e.kind() == io::ErrorKind::InvalidData)));
    }

    #[tokio::test]
    async fn dash_reports_broken_xml() {
        let chunks = vec![Ok(Bytes::from_static(b"<MPD><Period></MPD>"))];
        let out: Vec<io::Result<Bytes>> =
            rewrite(Kind::Dash, rw(), futures::stream::iter(chunks).boxed()).collect().await;
        assert!(out.iter().any(|c| c.is_err()), "mismatched end tags are an error");
    }

    fn exact() -> Grant {
        Grant::Exact { mint: std::sync::Arc::new(|path: &str| format!("EXACT[{path}]")) }
    }

    /// A path token on one playlist yields exact-path tokens for what the playlist lists, inside its folder only,
    /// and never a prefix (issue: a top-level playlist's token used to open the whole library).
    #[test]
    fn a_path_token_yields_exact_tokens_inside_the_manifest_folder() {
        let r = Rewriter::new("h", "/videos/top.m3u8", exact()).unwrap();
        assert_eq!(r.uri("seg1.ts").as_deref(), Some("seg1.ts?token=EXACT[/videos/seg1.ts]"));
        assert_eq!(r.uri("a/b%20c.ts").as_deref(), Some("a/b%20c.ts?token=EXACT[/videos/a/b c.ts]"));
        assert_eq!(r.uri("../etc/x.ts"), None, "outside the manifest's folder");
        let r = Rewriter::new("h", "/videos/film/master.m3u8", exact()).unwrap();
        assert_eq!(r.uri("/videos/other/a.ts"), None);
        assert_eq!(r.uri("720p/i.m3u8").as_deref(), Some("720p/i.m3u8?token=EXACT[/videos/film/720p/i.m3u8]"));
    }

    #[test]
    fn hls_variables_and_odd_characters_get_no_token() {
        let r = rw();
        assert_eq!(r.uri("{$cdn}/seg.ts"), None, "EXT-X-DEFINE substitution happens in the player");
        assert_eq!(r.uri("seg{$n}.ts"), None);
        assert_eq!(r.uri("a\\b.ts"), None, "backslash: WHATWG and RFC 3986 parsers disagree");
        assert_eq!(r.uri("a b.ts"), None);
        let line = "#EXT-X-MAP:URI=\"{$base}init.mp4\"";
        assert_eq!(r.hls_line(line), line);
    }

    const FAIL_CLOSED: [(&str, &str); 6] = [
        (
            "CDATA BaseURL",
            "<MPD><BaseURL><![CDATA[https://evil.example/]]></BaseURL><SegmentList><SegmentURL media=\"a.m4s\"/></SegmentList></MPD>",
        ),
        (
            "unknown entity",
            "<MPD><BaseURL>&cdn;</BaseURL><SegmentList><SegmentURL media=\"a.m4s\"/></SegmentList></MPD>",
        ),
        (
            "two BaseURLs",
            "<MPD><BaseURL>./</BaseURL><BaseURL>https://evil.example/</BaseURL><SegmentList><SegmentURL media=\"a.m4s\"/></SegmentList></MPD>",
        ),
        (
            "xml:base",
            "<MPD><Period xml:base=\"https://evil.example/\"><SegmentList><SegmentURL media=\"a.m4s\"/></SegmentList></Period></MPD>",
        ),
        (
            "DOCTYPE",
            "<!DOCTYPE MPD [<!ENTITY cdn \"https://evil.example/\">]><MPD><SegmentList><SegmentURL media=\"a.m4s\"/></SegmentList></MPD>",
        ),
        (
            "empty BaseURL twice",
            "<MPD><BaseURL/><BaseURL>https://evil.example/</BaseURL><SegmentList><SegmentURL media=\"a.m4s\"/></SegmentList></MPD>",
        ),
    ];

    #[tokio::test]
    async fn uri_attribute_names_on_other_elements_get_no_token() {
        // Found by the dash_rewrite fuzzer: `media` on a Period is no URI to a player.
        let mpd = "<MPD><Period media=\"PT0S\"><AdaptationSet><SegmentList><SegmentURL media=\"a.m4s\"/></SegmentList>\
                   </AdaptationSet></Period></MPD>";
        let r = Rewriter::new("media.example", "/videos/film/manifest.mpd", prefix("/videos/film/")).unwrap();
        let out = run(Kind::Dash, r, mpd, 4096).await;
        assert!(out.contains(r#"<Period media="PT0S">"#), "{out}");
        assert!(out.contains(r#"media="a.m4s?token="#), "{out}");
    }

    #[tokio::test]
    async fn an_element_inside_a_base_url_is_refused() {
        // Found by the dash_rewrite fuzzer: the text around the element made a base the player model read otherwise.
        let mpd = "<MPD><Period><BaseURL>http://media.example/a<Period><SegmentList><SegmentURL media=\"a.m4s\"/>\
                   </SegmentList></Period>b/</BaseURL></Period></MPD>";
        let r = Rewriter::new("media.example", "/videos/film/manifest.mpd", prefix("/videos/film/")).unwrap();
        let chunks = vec![Ok(Bytes::from_static(mpd.as_bytes()))];
        let out: Vec<io::Result<Bytes>> = rewrite(Kind::Dash, r, futures::stream::iter(chunks).boxed()).collect().await;
        let err = out.into_iter().find_map(Result::err).expect("refused");
        assert_eq!(err.to_string(), "a manifest element lies inside a BaseURL");
    }

    #[tokio::test]
    async fn dash_bases_that_players_may_read_differently_get_no_token() {
        for (what, mpd) in FAIL_CLOSED {
            let r = Rewriter::new("media.example", "/videos/film/manifest.mpd", prefix("/videos/film/")).unwrap();
            let out = run(Kind::Dash, r, mpd, 4096).await;
            assert!(!out.contains("token="), "{what}: {out}");
        }
        // The plain case still gets one, so the cases above fail for their reason alone.
        let r = Rewriter::new("media.example", "/videos/film/manifest.mpd", prefix("/videos/film/")).unwrap();
        let plain = "<MPD><BaseURL>./</BaseURL><SegmentList><SegmentURL media=\"a.m4s\"/></SegmentList></MPD>";
        assert!(run(Kind::Dash, r, plain, 4096).await.contains("a.m4s?token="));
    }

    async fn run_err(kind: Kind, r: Rewriter, input: &'static str) -> io::Error {
        let chunks = vec![Ok(Bytes::from_static(input.as_bytes()))];
        let out: Vec<io::Result<Bytes>> = rewrite(kind, r, futures::stream::iter(chunks).boxed()).collect().await;
        out.into_iter().find_map(Result::err).expect("the rewrite fails")
    }

    #[tokio::test]
    async fn dash_refuses_what_it_cannot_rewrite_safely() {
        let r = || Rewriter::new("media.example", "/videos/film/manifest.mpd", prefix("/videos/film/")).unwrap();
        let late = "<MPD><Period><SegmentList><SegmentURL media=\"a.m4s\"/></SegmentList><BaseURL>https://evil.example/</BaseURL></Period></MPD>";
        assert_eq!(run_err(Kind::Dash, r(), late).await.kind(), io::ErrorKind::InvalidData);
        let id = "<MPD><AdaptationSet><SegmentTemplate media=\"$RepresentationID$/s.m4s\"/><Representation id=\"//evil.example/x\"/></AdaptationSet></MPD>";
        assert_eq!(run_err(Kind::Dash, r(), id).await.kind(), io::ErrorKind::InvalidData);
        // A template names many paths: a path token cannot open them.
        let exact = Rewriter::new("media.example", "/videos/film/manifest.mpd", exact()).unwrap();
        let e = run_err(Kind::Dash, exact, MPD).await;
        assert!(e.get_ref().is_some_and(|e| e.is::<PrefixRequired>()), "{e}");
    }

    #[tokio::test]
    async fn dash_segment_lists_work_with_exact_tokens() {
        let r = Rewriter::new("media.example", "/videos/film/manifest.mpd", exact()).unwrap();
        let mpd = "<MPD><BaseURL>audio/</BaseURL><SegmentList><SegmentURL media=\"a1.m4s\"/></SegmentList></MPD>";
        let out = run(Kind::Dash, r, mpd, 4096).await;
        assert!(out.contains("media=\"a1.m4s?token=EXACT[/videos/film/audio/a1.m4s]\""), "{out}");
    }

    /// Fuzzing found these (fuzz/regressions): each sent a token off the host, or changed what is not a URI.
    #[test]
    fn hls_uri_attributes_are_read_pair_by_pair_and_split_lines_get_nothing() {
        let r = rw();
        let inside = r#"#EXT-X-KEY:METHOD=SAMPLE-AES,KEYFORMAT="a,URI="seg.ts""#;
        assert_eq!(r.hls_line(inside), inside, "URI=\" inside another attribute's quoted value is not an attribute");
        for line in ["#EXT-X-MAP:\r//other.example/x,URI=\"a.ts\"", "#EXT-X-MAP:\u{2028}//other.example/x,URI=\"a.ts\""]
        {
            assert_eq!(r.hls_line(line), line, "hls.js ends the tag early and reads the rest as a URI");
        }
        let stray = r#"#EXT-X-I-FRAME-STREAM-INF:BANDWIDTH=1,URI=a"b.example/x,URI="i.m3u8""#;
        assert_eq!(r.hls_line(stray), stray, "a quote in an unquoted value: no token on the line");
        let odd_tag = r#"#EXT-X-MEDIURI="A:TYPE=AUDIO,URI="en.m3u8""#;
        assert_eq!(r.hls_line(odd_tag), odd_tag, "a tag name that is not one");
        let two = r#"#EXT-X-MEDIA:TYPE=AUDIO,URI="a.m3u8",NAME="x,URI=y""#;
        assert_eq!(r.hls_line(two), r#"#EXT-X-MEDIA:TYPE=AUDIO,URI="a.m3u8?token=v1.abc.def",NAME="x,URI=y""#);
    }

    #[tokio::test]
    async fn dash_inherited_segments_never_follow_a_representation_base_off_the_host() {
        let r = || Rewriter::new("media.example", "/videos/film/manifest.mpd", prefix("/videos/film/")).unwrap();
        let off = "<MPD><Period><AdaptationSet><SegmentTemplate media=\"seg-$Number$.m4s\"/><Representation id=\"r1\"><BaseURL>https://other.example/</BaseURL></Representation></AdaptationSet></Period></MPD>";
        assert_eq!(run_err(Kind::Dash, r(), off).await.kind(), io::ErrorKind::InvalidData);
        let list = "<MPD><Period><AdaptationSet><SegmentList><SegmentURL media=\"a.m4s\"/></SegmentList><Representation id=\"r1\"><BaseURL>//other.example/</BaseURL></Representation></AdaptationSet></Period></MPD>";
        assert_eq!(run_err(Kind::Dash, r(), list).await.kind(), io::ErrorKind::InvalidData);
        // On this host the layout is fine, and a sibling AdaptationSet elsewhere inherits nothing.
        let ok = "<MPD><Period><AdaptationSet><SegmentTemplate media=\"seg-$Number$.m4s\"/><Representation id=\"r1\"><BaseURL>720p/</BaseURL></Representation></AdaptationSet><AdaptationSet><BaseURL>https://subs.example/</BaseURL></AdaptationSet></Period></MPD>";
        assert!(run(Kind::Dash, r(), ok, 4096).await.contains("seg-$Number$.m4s?token="));
    }

    #[tokio::test]
    async fn dash_attributes_never_break_out_of_their_quotes() {
        let r = Rewriter::new("media.example", "/videos/film/manifest.mpd", prefix("/videos/film/")).unwrap();
        let mpd = "<MPD><SegmentList><SegmentURL x='a\"b<c' media=\"seg.m4s\"/></SegmentList></MPD>";
        let out = run(Kind::Dash, r, mpd, 4096).await;
        assert!(out.contains(r#"x="a&quot;b&lt;c""#) && out.contains("seg.m4s?token="), "{out}");
    }
}
