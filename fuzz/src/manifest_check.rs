//! Property checks for rewritten manifests.
//!
//! The fuzz targets give the rewriter tokens it cannot have invented (`v1.fuzzmark.…`), so every `token=` of that
//! form in the output was added by the rewrite. The checks then read the *output* the way players do (HLS: as
//! RFC 8216 reads it and as hls.js does, which also ends lines at a lone CR and tags at U+2028/U+2029; DASH: an XML
//! tree with `BaseURL` at every level, several `BaseURL`s as alternatives, templates inherited by `Representation`s
//! and `$…$` identifiers filled in) and require that every request that carries an added token goes to the
//! request's host and port. A URI that is not fetched over HTTP(S), or holds the token only in its fragment, sends
//! it nowhere.
//!
//! A failed check panics with a message that names the URI and where it resolves: libFuzzer records the input.

use std::collections::BTreeSet;

use quick_xml::events::Event;
use url::Url;
use vd_token::PathKind;

/// What every added token starts with, as it appears in the output.
pub const MARK: &str = "token=v1.fuzzmark.";
/// Inputs that already contain this are not checked for added tokens (they could not be told apart).
pub const MARK_CORE: &[u8] = b"fuzzmark";

/// The token a prefix grant appends.
pub fn prefix_token() -> String {
    "v1.fuzzmark.p~".to_owned()
}

/// The token an exact grant mints for `path`: the path in hex, so the check can read back what was minted.
pub fn exact_token(path: &str) -> String {
    let mut t = String::from("v1.fuzzmark.x");
    for b in path.bytes() {
        t.push_str(&format!("{b:02x}"));
    }
    t.push('~');
    t
}

/// What the request that fetched the manifest was granted.
#[derive(Debug, Clone)]
pub enum GrantKind {
    /// A prefix token for this canonical scope.
    Prefix { scope: String },
    /// A path token for the manifest alone: each URI gets a token minted for its own path, inside `folder`.
    Exact { folder: String },
}

/// The request a manifest was rewritten for.
#[derive(Debug, Clone)]
pub struct Request {
    /// The manifest's URL as the player fetched it (`http://{host}{raw_path}`).
    pub base: Url,
    pub grant: GrantKind,
}

#[derive(Debug, PartialEq, Eq)]
enum Minted {
    Prefix,
    Exact(String),
}

/// Every added token in `s`, decoded.
fn minted(s: &str) -> Vec<Result<Minted, String>> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(at) = rest.find(MARK) {
        let after = &rest[at + MARK.len()..];
        let end = after.find('~').unwrap_or(after.len());
        let body = &after[..end];
        out.push(if body == "p" {
            Ok(Minted::Prefix)
        } else if let Some(hex) = body.strip_prefix('x') {
            decode_hex(hex).map(Minted::Exact).ok_or_else(|| format!("a minted token is cut: {body:?}"))
        } else {
            Err(format!("an added token is cut: {body:?}"))
        });
        rest = &after[end..];
    }
    out
}

fn decode_hex(hex: &str) -> Option<String> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> =
        (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok()).collect();
    String::from_utf8(bytes?).ok()
}

/// Where `uri` takes a token when resolved against `base`: `None` when no request carries it (the URI does not
/// resolve, is not fetched over HTTP, or holds the token only in its fragment, which is never sent).
fn fetched(base: &Url, uri: &str) -> Option<Url> {
    let target = base.join(uri).ok()?;
    let sent = &target[..url::Position::AfterQuery];
    (matches!(target.scheme(), "http" | "https") && sent.contains("fuzzmark")).then_some(target)
}

/// Checks one URI that carries added tokens against every base a player may resolve it with. `exact_paths`: an
/// exact token must name the very path the request goes to.
fn check_uri(req: &Request, uri: &str, bases: &[Url], exact_paths: bool) -> Result<(), String> {
    for token in minted(uri) {
        match (token?, &req.grant) {
            (Minted::Prefix, GrantKind::Prefix { .. }) => {}
            (Minted::Exact(path), GrantKind::Exact { folder }) => {
                if !path.starts_with(folder.as_str()) || vd_token::check_canonical(&path, PathKind::Path).is_err() {
                    return Err(format!("a token was minted for {path:?}, outside the manifest's folder {folder:?}"));
                }
                if exact_paths {
                    for target in bases.iter().filter_map(|b| fetched(b, uri)) {
                        let requested = vd_token::canonical_path(target.path()).map(|p| p.into_owned());
                        if requested.as_deref() != Ok(path.as_str()) {
                            return Err(format!(
                                "{uri:?} carries a token minted for {path:?} but a player requests {:?}",
                                target.path()
                            ));
                        }
                    }
                }
            }
            (m, g) => return Err(format!("{uri:?} carries a {m:?} token under a {g:?} grant")),
        }
    }
    for base in bases {
        let Some(target) = fetched(base, uri) else { continue };
        if target.host_str() != req.base.host_str() || target.port() != req.base.port() {
            return Err(format!(
                "token sent off the request's host: {uri:?} against base {base} resolves to {target} (request {})",
                req.base
            ));
        }
    }
    Ok(())
}

fn fail(what: &str, input: &[u8], output: &[u8], msg: String) -> ! {
    panic!(
        "{what} property violated: {msg}\n--- input ---\n{}\n--- output ---\n{}",
        String::from_utf8_lossy(input),
        String::from_utf8_lossy(output)
    );
}

/// HLS: the output is the input with tokens inserted and nothing else changed, and every token is on a URI that
/// resolves to the request's host (and, for minted tokens, names exactly the path the player requests).
///
/// Two readings of the output are checked. RFC 8216: lines end at LF (or CRLF); a URI line is the whole line; a
/// tag's URIs are quoted attribute values, and an added token must be inside one. hls.js: lines also end at a lone
/// CR, and a tag also ends at U+2028/U+2029 (JavaScript's `.` stops there), the rest of the line then being read
/// as a URI line; every tokenised URI it reads must stay on the request's host.
pub fn check_hls(req: &Request, input: &[u8], output: &[u8], finished: bool) {
    if input.windows(MARK_CORE.len()).any(|w| w == MARK_CORE) {
        return;
    }
    let Ok(out) = std::str::from_utf8(output) else {
        fail("hls", input, output, "the output is not UTF-8 although every line was checked".into())
    };
    if let Err(msg) = same_but_tokens(input, out, finished) {
        fail("hls", input, output, msg);
    }
    let bases = std::slice::from_ref(&req.base);
    let check = |uri: &str, exact: bool| {
        if uri.contains("{$") {
            fail("hls", input, output, format!("a token on a URI with variable substitution: {uri:?}"));
        }
        if let Err(msg) = check_uri(req, uri, bases, exact) {
            fail("hls", input, output, msg);
        }
    };
    // RFC 8216.
    for line in out.split('\n') {
        let t = line.trim();
        if !t.contains(MARK) {
            continue;
        }
        if !t.starts_with('#') {
            check(t, true);
            continue;
        }
        for quoted in quoted_with_tokens(t) {
            match quoted {
                Some(uri) => check(uri, true),
                None => fail(
                    "hls",
                    input,
                    output,
                    format!(
                        "a token outside any quoted attribute value, so on no URI (a `URI=\"` inside another quoted value taken for an attribute?): {t:?}"
                    ),
                ),
            }
        }
    }
    // hls.js.
    for line in out.split(['\n', '\r']) {
        let mut rest = line;
        loop {
            let t = rest.trim();
            if !t.starts_with('#') {
                if t.contains(MARK) {
                    check(t, false);
                }
                break;
            }
            let (tag, after) = match t.find(['\u{2028}', '\u{2029}']) {
                Some(i) => (&t[..i], Some(&t[i + 3..])),
                None => (t, None),
            };
            // A token outside quotes is not on a URI in either reading (reported above for the RFC one).
            for uri in quoted_with_tokens(tag).into_iter().flatten() {
                check(uri, false);
            }
            match after {
                Some(a) => rest = a,
                None => break,
            }
        }
    }
}

/// For each added token in a tag line: the quoted value it is in, or `None` when it is outside any.
fn quoted_with_tokens(t: &str) -> Vec<Option<&str>> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(off) = t[from..].find(MARK) {
        let at = from + off;
        let end = t[at..].find('"').map_or(t.len(), |q| at + q);
        if t[..at].matches('"').count().is_multiple_of(2) {
            out.push(None);
        } else {
            let start = t[..at].rfind('"').map_or(0, |q| q + 1);
            out.push(Some(&t[start..end]));
        }
        from = end.max(at + MARK.len());
    }
    out
}

/// Whether `out` is `input` with only `[?&]token=…~` insertions. When the rewrite stopped early (an error), `out` is
/// compared with the start of `input` only.
fn same_but_tokens(input: &[u8], out: &str, finished: bool) -> Result<(), String> {
    let mut stripped = Vec::with_capacity(out.len());
    let mut cuts = BTreeSet::new();
    let mut rest = out;
    while let Some(at) = rest.find(MARK) {
        stripped.extend_from_slice(&rest.as_bytes()[..at]);
        cuts.insert(stripped.len());
        let after = &rest[at + MARK.len()..];
        let end = after.find('~').map_or(after.len(), |e| e + 1);
        rest = &after[end..];
    }
    stripped.extend_from_slice(rest.as_bytes());
    let (mut i, mut j) = (0, 0);
    while j < stripped.len() {
        if i < input.len() && input[i] == stripped[j] {
            i += 1;
            j += 1;
        } else if cuts.contains(&(j + 1)) && matches!(stripped[j], b'?' | b'&') {
            j += 1;
        } else {
            return Err(format!(
                "the output differs from the input beyond the added tokens, at input byte {i}: {:?} vs {:?}",
                String::from_utf8_lossy(&input[i..(i + 40).min(input.len())]),
                String::from_utf8_lossy(&stripped[j..(j + 40).min(stripped.len())])
            ));
        }
    }
    if finished && i != input.len() {
        return Err(format!("the output lost the input's last {} bytes", input.len() - i));
    }
    Ok(())
}

/// One element of the rewritten DASH manifest.
struct Node {
    local: Vec<u8>,
    parent: Option<usize>,
    attrs: Vec<(Vec<u8>, String)>,
    /// The text of each `BaseURL` child, entities resolved, CDATA included (what `textContent` gives a player).
    base_urls: Vec<String>,
}

/// Elements whose `BaseURL` children every player applies; players may ignore one elsewhere.
const BASE_LEVELS: [&[u8]; 4] = [b"MPD", b"Period", b"AdaptationSet", b"Representation"];
/// Elements whose segment information their `Representation`s inherit.
const OWNERS: [&[u8]; 3] = [b"Period", b"AdaptationSet", b"Representation"];
/// Attributes that hold a URI (the rewriter's list; a token elsewhere is a token in the wrong place).
const URI_ATTRS: [&[u8]; 4] = [b"media", b"initialization", b"index", b"sourceURL"];
/// Upper bound on the bases tried per URI, so a manifest of many alternatives stays fast to check.
const MAX_BASES: usize = 64;

/// Parses the output leniently, as quick-xml (and tXml-style player parsers) do: several top-level elements and
/// text outside them are read too. `None`: broken beyond that (bad nesting, an unknown entity, a bad attribute),
/// which no player loads.
fn parse_tree(output: &[u8]) -> Option<(Vec<Node>, bool)> {
    let mut reader = quick_xml::Reader::from_reader(output);
    let mut buf = Vec::new();
    let mut nodes: Vec<Node> = Vec::new();
    let mut stack: Vec<usize> = Vec::new();
    let mut doctype = false;
    let open = |e: &quick_xml::events::BytesStart<'_>, nodes: &mut Vec<Node>, stack: &[usize]| -> Option<usize> {
        let mut attrs = Vec::new();
        for a in e.attributes() {
            let a = a.ok()?;
            let v = a.normalized_value(quick_xml::XmlVersion::Implicit1_0).ok()?;
            attrs.push((a.key.as_ref().to_vec(), v.into_owned()));
        }
        let parent = stack.last().copied();
        let local = e.local_name().as_ref().to_vec();
        if local == b"BaseURL"
            && let Some(p) = parent
        {
            nodes[p].base_urls.push(String::new());
        }
        nodes.push(Node { local, parent, attrs, base_urls: Vec::new() });
        Some(nodes.len() - 1)
    };
    // The innermost open BaseURL's text slot: (its parent, index in the parent's list).
    let base_slot = |nodes: &[Node], stack: &[usize]| -> Option<(usize, usize)> {
        let at = stack.iter().rposition(|&n| nodes[n].local == b"BaseURL")?;
        let p = nodes[stack[at]].parent?;
        Some((p, nodes[p].base_urls.len() - 1))
    };
    loop {
        buf.clear();
        let event = reader.read_event_into(&mut buf).ok()?;
        let text: Option<String> = match &event {
            Event::Eof => break,
            Event::Start(e) => {
                let n = open(e, &mut nodes, &stack)?;
                stack.push(n);
                None
            }
            Event::Empty(e) => {
                open(e, &mut nodes, &stack)?;
                None
            }
            Event::End(_) => {
                stack.pop()?;
                None
            }
            Event::Text(t) => Some(t.decode().ok()?.into_owned()),
            Event::CData(c) => Some(c.decode().ok()?.into_owned()),
            Event::GeneralRef(r) => {
                let s = match r.resolve_char_ref() {
                    Ok(Some(c)) => c.to_string(),
                    // Without a DTD an unknown entity makes the document not well-formed.
                    _ => quick_xml::escape::resolve_predefined_entity(&r.decode().ok()?)?.to_owned(),
                };
                Some(s)
            }
            // Only a DTD before the root element is one: a strict parser refuses one elsewhere, and lenient ones
            // (which read the rest) expand no entities.
            Event::DocType(_) => {
                doctype |= nodes.is_empty();
                None
            }
            _ => None,
        };
        if let Some(t) = text
            && let Some((p, i)) = base_slot(&nodes, &stack)
        {
            nodes[p].base_urls[i].push_str(&t);
        }
    }
    if !stack.is_empty() {
        return None;
    }
    Some((nodes, doctype))
}

fn ancestors(nodes: &[Node], n: usize) -> Vec<usize> {
    let mut path = vec![n];
    let mut at = n;
    while let Some(p) = nodes[at].parent {
        path.push(p);
        at = p;
    }
    path.reverse();
    path
}

/// The bases in effect inside `n`, applying the `BaseURL`s of `n` and its ancestors (only at the standard levels
/// when `standard_only`), each alternative `BaseURL` giving one more base.
fn chain(nodes: &[Node], root: &Url, n: usize, standard_only: bool, into: &mut Vec<Url>) {
    let mut set = vec![root.clone()];
    for a in ancestors(nodes, n) {
        let node = &nodes[a];
        if node.base_urls.is_empty() || (standard_only && !BASE_LEVELS.contains(&node.local.as_slice())) {
            continue;
        }
        let mut next: Vec<Url> = Vec::new();
        for b in &set {
            for text in &node.base_urls {
                if let Ok(u) = b.join(text.trim())
                    && !next.contains(&u)
                    && next.len() < MAX_BASES
                {
                    next.push(u);
                }
            }
        }
        if !next.is_empty() {
            set = next;
        }
    }
    for u in set {
        if !into.contains(&u) && into.len() < MAX_BASES {
            into.push(u);
        }
    }
}

fn descendants_named(nodes: &[Node], of: usize, name: &[u8]) -> Vec<usize> {
    (of + 1..nodes.len()).filter(|&d| nodes[d].local == name && ancestors(nodes, d).contains(&of)).collect()
}

/// A template with its identifiers filled in, once per `RepresentationID` candidate.
fn fill_template(template: &str, ids: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for id in ids {
        let mut s = String::new();
        let mut parts = template.split('$');
        s.push_str(parts.next().unwrap_or_default());
        while let Some(ident) = parts.next() {
            let name = ident.split('%').next().unwrap_or_default();
            match name {
                "" => s.push('$'),
                "RepresentationID" => s.push_str(id),
                "Number" | "Time" | "Bandwidth" | "SubNumber" => s.push('1'),
                _ => {
                    s.push('$');
                    s.push_str(ident);
                    s.push('$');
                }
            }
            s.push_str(parts.next().unwrap_or_default());
        }
        out.push(s);
    }
    out
}

/// DASH: every added token sits in a URI attribute, and every URL a player may build from that attribute resolves
/// to the request's host.
pub fn check_dash(req: &Request, input: &[u8], output: &[u8]) {
    if input.windows(MARK_CORE.len()).any(|w| w == MARK_CORE) {
        return;
    }
    let marks = output.windows(MARK.len()).filter(|w| *w == MARK.as_bytes()).count();
    if marks == 0 {
        return;
    }
    let Some((nodes, doctype)) = parse_tree(output) else { return };
    if doctype {
        fail("dash", input, output, "tokens in a manifest with a DTD, whose entities a player expands".into());
    }
    let mut found = 0;
    for (n, node) in nodes.iter().enumerate() {
        for (key, value) in &node.attrs {
            let here = value.matches(MARK).count();
            if here == 0 {
                continue;
            }
            if !URI_ATTRS.contains(&key.as_slice()) {
                fail(
                    "dash",
                    input,
                    output,
                    format!("a token in attribute {:?}, which is not a URI", String::from_utf8_lossy(key)),
                );
            }
            found += here;
            // Segment information is inherited: by the Representations under its owner, resolved with theirs.
            let owner =
                ancestors(&nodes, n).into_iter().rev().skip(1).find(|&a| OWNERS.contains(&nodes[a].local.as_slice()));
            let reps = owner.map_or_else(
                || (0..nodes.len()).filter(|&r| nodes[r].local == b"Representation").collect(),
                |o| {
                    if nodes[o].local == b"Representation" {
                        vec![o]
                    } else {
                        descendants_named(&nodes, o, b"Representation")
                    }
                },
            );
            let mut bases = Vec::new();
            if let Some(parent) = node.parent {
                chain(&nodes, &req.base, parent, false, &mut bases);
                chain(&nodes, &req.base, parent, true, &mut bases);
            } else {
                bases.push(req.base.clone());
            }
            for &r in &reps {
                chain(&nodes, &req.base, r, false, &mut bases);
                chain(&nodes, &req.base, r, true, &mut bases);
            }
            let uris = if node.local == b"SegmentTemplate" {
                let mut ids: Vec<String> = reps
                    .iter()
                    .filter_map(|&r| nodes[r].attrs.iter().find(|(k, _)| k == b"id").map(|(_, v)| v.clone()))
                    .collect();
                if ids.is_empty() {
                    ids.push("0".to_owned());
                }
                fill_template(value, &ids)
            } else {
                vec![value.clone()]
            };
            for uri in &uris {
                if let Err(msg) = check_uri(req, uri, &bases, false) {
                    fail("dash", input, output, msg);
                }
            }
        }
    }
    if found != marks {
        fail("dash", input, output, format!("{} added token(s) outside any element's URI attribute", marks - found));
    }
}
