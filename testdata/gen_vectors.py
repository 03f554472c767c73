#!/usr/bin/env python3
"""Writes testdata/token-vectors.json from the rules of docs/token-format.md.

This is a third, independent implementation of the signer (Python standard library only), so the vectors are
not merely the Rust crate's output echoed back at it. Expected verdicts are written here by hand, case by case.
Run it after changing a vector; CI checks that the committed file is what it prints.
"""

import base64
import hashlib
import hmac
import json
import sys
from pathlib import Path
from urllib.parse import quote, urlencode

T = 1767225600  # 2026-01-01T00:00:00Z: the "now" most vectors use.
SKEW = 30
MAX_LIFETIME = 86400
BASE_URL = "https://media.example.com"
ROUTE_PREFIX = "/videos"  # the agent's route prefix, where the path carrier (spec §5.4) starts


def secret(label: str) -> bytes:
    return hashlib.sha256(f"videodelivery test vector key {label}".encode()).digest()


KEYS = {
    "k-active": {"state": "active", "secret": secret("active"), "created_at": T - 7200, "activated_at": T - 7140},
    "k-pending": {"state": "pending", "secret": secret("pending"), "created_at": T - 30, "activate_after": T + 30},
    "k-retiring": {
        "state": "retiring", "secret": secret("retiring"), "created_at": T - 700000, "activated_at": T - 699940,
        "retired_at": T - 7140, "accept_until": T + 3600,
    },
    "k-retired": {
        "state": "retiring", "secret": secret("retired"), "created_at": T - 1400000, "activated_at": T - 1399940,
        "retired_at": T - 699940, "accept_until": T - 1,
    },
}


def keyring_doc() -> dict:
    keys = []
    for kid, k in KEYS.items():
        entry = {"kid": kid, "state": k["state"], "secret": base64.b64encode(k["secret"]).decode()}
        for f in ("created_at", "activate_after", "activated_at", "retired_at", "accept_until"):
            if f in k:
                entry[f] = k[f]
        keys.append(entry)
    return {"version": 1, "keys": keys}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


VIA = ("manifest", "session")  # spec §2: marks a token an agent minted; never minted by a backend


def claims_text(kid, exp, scope, nbf=None, ip=None, via=None) -> str:
    lines = [kid, str(exp), "" if nbf is None else str(nbf), scope, ip or ""]
    if via is not None:
        assert via in VIA, via
        lines.append("via:" + via)  # the optional sixth line (spec §4)
    return "\n".join(lines)


def mac(kid: str, text: str, key: bytes | None = None) -> str:
    key = KEYS[kid]["secret"] if key is None else key
    return b64url(hmac.new(key, ("VD1\n" + text).encode(), hashlib.sha256).digest())


def compact(kid, exp, scope, nbf=None, ip=None, key=None, text=None, via=None) -> str:
    text = claims_text(kid, exp, scope, nbf, ip, via) if text is None else text
    return "v1." + b64url(text.encode()) + "." + mac(kid, text, key)


def encode_path(path: str) -> str:
    return quote(path.encode(), safe="/-._~")


def query_params(kid, exp, path, prefix=None, nbf=None, ip=None, key=None) -> list[tuple[str, str]]:
    scope = f"prefix:{prefix}" if prefix else f"path:{path}"
    sig = mac(kid, claims_text(kid, exp, scope, nbf, ip), key)
    params = [("expires", str(exp))]
    if nbf is not None:
        params.append(("nbf", str(nbf)))
    if prefix:
        params.append(("prefix", prefix))
    if ip:
        params.append(("ip", ip))
    params += [("kid", kid), ("signature", sig)]
    return params


def form(params) -> str:
    # WHATWG application/x-www-form-urlencoded, as URLSearchParams serialises it.
    return urlencode(params, quote_via=lambda s, safe, enc, err: quote(s, safe="*-._", encoding=enc).replace("%20", "+"))


# ---------------------------------------------------------------------------------------------------------------
# Paths: raw URL path -> canonical, or invalid.

PATHS = [
    ("plain", "/videos/a.mp4", "/videos/a.mp4", False),
    ("nested", "/videos/2026/launch/master.m3u8", "/videos/2026/launch/master.m3u8", False),
    ("utf8 and space", "/videos/caf%C3%A9%20noir.mp4", "/videos/café noir.mp4", False),
    ("lower-case hex", "/videos/caf%c3%a9%20noir.mp4", "/videos/café noir.mp4", False),
    ("encoded slash joins segments", "/videos/a%2Fb.mp4", "/videos/a/b.mp4", False),
    ("plus is literal", "/videos/a+b.mp4", "/videos/a+b.mp4", False),
    ("decoded once", "/videos/100%2525.mp4", "/videos/100%25.mp4", False),
    ("encoded query and hash characters", "/videos/what%3F%23.mp4", "/videos/what?#.mp4", False),
    ("dot inside a name", "/videos/.hidden/a..b.mp4", "/videos/.hidden/a..b.mp4", False),
    ("prefix", "/videos/abc/", "/videos/abc/", True),
    ("root prefix", "/", "/", True),
    ("exact path may not end in slash", "/videos/abc/", None, False),
    ("no leading slash", "videos/a.mp4", None, False),
    ("empty", "", None, False),
    ("dot-dot segment", "/videos/../etc/passwd", None, False),
    ("encoded dot-dot segment", "/videos/%2e%2e/etc/passwd", None, False),
    ("dot-dot via encoded slash", "/videos/a%2F..%2F..%2Fetc", None, False),
    ("dot segment", "/videos/./a.mp4", None, False),
    ("empty segment", "/videos//a.mp4", None, False),
    ("encoded empty segment", "/videos/%2Fa.mp4", None, False),
    ("bad escape", "/videos/a%zz.mp4", None, False),
    ("truncated escape", "/videos/a%4", None, False),
    ("invalid utf-8", "/videos/%C3%28.mp4", None, False),
    ("control character", "/videos/a%0Ab.mp4", None, False),
    ("nul", "/videos/a%00.mp4", None, False),
    ("backslash", "/videos/a%5C..%5Cb", None, False),
    ("prefix must end in slash", "/videos/abc", None, True),
    ("prefix with empty segment", "/videos//", None, True),
    ("longest allowed", "/" + "a" * 1023, "/" + "a" * 1023, False),
    ("too long", "/" + "a" * 1024, None, False),
]

# ---------------------------------------------------------------------------------------------------------------
# IP ranges: what a signer is given -> the canonical claim, or an error.

IPS = [
    ("203.0.113.7", "203.0.113.7/32"),
    ("203.0.113.0/24", "203.0.113.0/24"),
    ("10.1.2.3/8", "10.0.0.0/8"),
    ("2001:DB8:0:0:1:0:0:1", "2001:db8::1:0:0:1/128"),
    ("2001:db8:0:0:0:0:2:1/64", "2001:db8::/64"),
    ("2001:db8::1/128", "2001:db8::1/128"),
    ("2001:db8:0:1:1:1:1:1", "2001:db8:0:1:1:1:1:1/128"),
    ("::/0", "::/0"),
    ("0.0.0.0/0", "0.0.0.0/0"),
    ("::ffff:203.0.113.7", None),
    ("203.0.113.7/33", None),
    ("203.0.113", None),
    ("not-an-ip", None),
]

# ---------------------------------------------------------------------------------------------------------------
# Signing: claims -> signing input, signature, compact token and both URL forms.

SIGN = [
    ("exact path", dict(kid="k-active", exp=T + 3600, path="/videos/a.mp4")),
    ("exact path with nbf", dict(kid="k-active", exp=T + 3600, nbf=T - 60, path="/videos/a.mp4")),
    ("prefix for a playlist", dict(kid="k-active", exp=T + 7200, path="/videos/abc/master.m3u8", prefix="/videos/abc/")),
    ("ipv4 binding", dict(kid="k-active", exp=T + 600, path="/videos/a.mp4", ip="203.0.113.7/32")),
    ("ipv6 range binding", dict(kid="k-active", exp=T + 600, path="/videos/a.mp4", ip="2001:db8::/64")),
    ("unicode and space in the path", dict(kid="k-active", exp=T + 600, path="/videos/café noir.mp4")),
    ("characters that need encoding", dict(kid="k-active", exp=T + 600, path="/videos/a+b&c=d?#%.mp4")),
    ("everything", dict(kid="k-active", exp=T + 900, nbf=T, path="/videos/série/1080p/seg 1.m4s",
                        prefix="/videos/série/", ip="198.51.100.0/24")),
    # Tokens an agent mints (spec §5.5, §5.6): compact only, so these vectors have no URL forms.
    ("agent-minted manifest token", dict(kid="k-active", exp=T + 7200, path="/videos/abc/720p/seg1.ts",
                                         prefix="/videos/abc/", via="manifest")),
    ("agent-minted manifest path token", dict(kid="k-active", exp=T + 7200, path="/videos/abc/720p/index.m3u8",
                                              ip="203.0.113.7/32", via="manifest")),
    ("agent-minted session token", dict(kid="k-active", exp=T + 14400, path="/videos/abc/master.m3u8",
                                        prefix="/videos/abc/", ip="2001:db8::/64", via="session")),
]


def sign_vector(name, c):
    scope = f"prefix:{c['prefix']}" if c.get("prefix") else f"path:{c['path']}"
    text = claims_text(c["kid"], c["exp"], scope, c.get("nbf"), c.get("ip"), c.get("via"))
    token = compact(c["kid"], c["exp"], scope, c.get("nbf"), c.get("ip"), via=c.get("via"))
    claims = {"kid": c["kid"], "exp": c["exp"]}
    if "nbf" in c:
        claims["nbf"] = c["nbf"]
    claims["scope"] = {"kind": "prefix", "path": c["prefix"]} if c.get("prefix") else {"kind": "path", "path": c["path"]}
    if c.get("ip"):
        claims["ip"] = c["ip"]
    vector = {
        "name": name,
        "claims": claims,
        "path": c["path"],
        "signing_input": "VD1\n" + text,
        "signature": mac(c["kid"], text),
        "token": token,
    }
    if c.get("via"):
        # Only agents mint `via`, and only as compact tokens: no signer URL, no query-parameter form (spec §5.1).
        claims["via"] = c["via"]
        return vector
    params = query_params(c["kid"], c["exp"], c["path"], c.get("prefix"), c.get("nbf"), c.get("ip"))
    url_path = BASE_URL + encode_path(c["path"])
    extra = {}
    if c.get("prefix"):
        # Path carrier: the token as the segment after {route-prefix}/t/.
        rest = c["path"][len(ROUTE_PREFIX):]
        extra["path_url"] = BASE_URL + encode_path(ROUTE_PREFIX) + "/t/" + token + encode_path(rest)
    return {
        **vector,
        "url": url_path + "?" + form(params),
        "token_url": url_path + "?" + form([("token", token)]),
        **extra,
    }


# ---------------------------------------------------------------------------------------------------------------
# Verification: a request at a time -> a verdict.

A = "k-active"
P = "/videos/a.mp4"


def tok(exp=T + 3600, path=P, kid=A, **kw):
    scope = f"prefix:{kw.pop('prefix')}" if "prefix" in kw else f"path:{path}"
    return compact(kid, exp, scope, **kw)


def q(**kw):
    kw.setdefault("kid", A)
    kw.setdefault("exp", T + 3600)
    kw.setdefault("path", P)
    return form(query_params(**kw))


def flip_last(s: str) -> str:
    # Change the last significant character while keeping the base64url text canonical (43 chars, 2 zero bits).
    return s[:-1] + ("E" if s[-1] != "E" else "I")


GOOD = tok()
ABC = tok(prefix="/videos/abc/")


def in_path(token: str, rest: str) -> str:
    return f"{ROUTE_PREFIX}/t/{token}/{rest}"


MANIFEST_ABC = tok(prefix="/videos/abc/", via="manifest")
SESSION_ABC = tok(prefix="/videos/abc/", via="session")
SESSION_ABC_IP = tok(prefix="/videos/abc/", ip="203.0.113.7/32", via="session")
LINES5 = claims_text(A, T + 3600, "path:" + P)  # the five lines of GOOD's claims text


def strip_via(token: str) -> str:
    # Drop the sixth line from the claims but keep the signature: the MAC covers `via`, so this must not verify.
    _, body, sig = token.split(".")
    text = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode()
    assert "\nvia:" in text
    return "v1." + b64url(text.rsplit("\n", 1)[0].encode()) + "." + sig


VERIFY = [
    # Valid, through every carrier.
    ("signed-url parameters", dict(path=P, query=q()), "valid"),
    ("token query parameter", dict(path=P, query="token=" + GOOD), "valid"),
    ("key alias of the token parameter", dict(path=P, query="key=" + GOOD), "valid"),
    ("bearer header", dict(path=P, authorization="Bearer " + GOOD), "valid"),
    ("bearer scheme is case-insensitive", dict(path=P, authorization="bearer " + GOOD), "valid"),
    ("cookie", dict(path=P, cookies=["vd_token=" + GOOD]), "valid"),
    ("cookie among others", dict(path=P, cookies=["theme=dark; vd_token=" + GOOD + "; lang=fr"]), "valid"),
    ("first cookie that verifies wins", dict(path=P, cookies=["vd_token=" + tok(exp=T - 3600), "vd_token=" + GOOD]), "valid"),
    ("other query parameters are ignored", dict(path=P, query="utm_source=mail&" + q() + "&t=42"), "valid"),
    ("prefix via signed-url parameters", dict(path="/videos/abc/720p/seg1.ts",
                                              query=q(path="/videos/abc/master.m3u8", prefix="/videos/abc/")), "valid"),
    ("prefix compact token on a segment", dict(path="/videos/abc/720p/seg1.ts",
                                               query="token=" + tok(prefix="/videos/abc/")), "valid"),
    ("pending key is accepted", dict(path=P, query="token=" + tok(kid="k-pending")), "valid"),
    ("retiring key before accept_until", dict(path=P, query="token=" + tok(kid="k-retiring")), "valid"),
    ("ipv4 address binding", dict(path=P, client_ip="203.0.113.7", query="token=" + tok(ip="203.0.113.7/32")), "valid"),
    ("ipv4 range binding", dict(path=P, client_ip="203.0.113.200", query="token=" + tok(ip="203.0.113.0/24")), "valid"),
    ("ipv6 range binding", dict(path=P, client_ip="2001:db8::42", query=q(ip="2001:db8::/64")), "valid"),
    ("ipv4-mapped client matches an ipv4 claim", dict(path=P, client_ip="::ffff:203.0.113.7",
                                                      query="token=" + tok(ip="203.0.113.7/32")), "valid"),
    ("nbf in the past", dict(path=P, query=q(nbf=T - 60)), "valid"),
    ("percent-encoded utf-8 path", dict(path="/videos/caf%C3%A9%20noir.mp4", query=q(path="/videos/café noir.mp4")), "valid"),
    ("lower-case escapes are the same path", dict(path="/videos/caf%c3%a9%20noir.mp4",
                                                  query="token=" + tok(path="/videos/café noir.mp4")), "valid"),
    ("encoded slash is the same object", dict(path="/videos/a%2Fb.mp4", query="token=" + tok(path="/videos/a/b.mp4")), "valid"),
    ("prefix parameter with form encoding", dict(path="/videos/série/a.mp4",
                                                 query=q(path="/videos/série/a.mp4", prefix="/videos/série/")), "valid"),
    ("expiry edge: now = exp + skew", dict(now=T + 3600 + SKEW, path=P, query="token=" + GOOD), "valid"),
    ("nbf edge: now = nbf - skew", dict(path=P, query="token=" + tok(nbf=T + SKEW)), "valid"),
    ("lifetime edge: exp - now = max_lifetime + skew", dict(path=P, query=q(exp=T + MAX_LIFETIME + SKEW)), "valid"),
    ("query carrier wins over bearer", dict(path=P, query="token=" + GOOD, authorization="Bearer v1.garbage"), "valid"),
    ("non-bearer authorization falls through to cookie", dict(path=P, authorization="Basic dXNlcjpwYXNz",
                                                              cookies=["vd_token=" + GOOD]), "valid"),
    # Path carrier (spec §5.4): checked against the path without /t/{token}.
    ("path carrier on a playlist", dict(path=in_path(ABC, "abc/master.m3u8")), "valid"),
    ("path carrier on a segment in a subfolder", dict(path=in_path(ABC, "abc/720p/seg1.m4s")), "valid"),
    ("path carrier with an encoded object path", dict(path=in_path(tok(prefix="/videos/série/"), "s%C3%A9rie/a%20b.m4s")),
     "valid"),
    ("path carrier wins over a bad cookie", dict(path=in_path(ABC, "abc/seg1.ts"), cookies=["vd_token=v1.garbage"]), "valid"),
    ("a deeper t folder is an ordinary folder", dict(path="/videos/abc/t/x/seg1.ts", query="token=" + ABC), "valid"),
    ("t outside the route prefix is not a carrier", dict(path=in_path(ABC, "abc/seg1.ts").replace("/videos/", "/other/", 1)),
     "missing"),
    ("path carrier needs a prefix token", dict(path=in_path(GOOD, "a.mp4")), "malformed"),
    ("path carrier that is not a token", dict(path=in_path("garbage", "abc/seg1.ts")), "malformed"),
    ("path carrier and a query token together", dict(path=in_path(ABC, "abc/seg1.ts"), query="token=" + ABC), "malformed"),
    ("path carrier and signed-url parameters together", dict(path=in_path(ABC, "abc/seg1.ts"), query=q()), "malformed"),
    ("path carrier with a changed signature", dict(path=in_path(flip_last(ABC), "abc/seg1.ts")), "bad_signature"),
    ("path carrier expired", dict(now=T + 3600 + SKEW + 1, path=in_path(ABC, "abc/seg1.ts")), "expired"),
    ("path carrier outside its prefix", dict(path=in_path(ABC, "other/seg1.ts")), "wrong_scope"),
    # Tokens an agent minted (`via`, spec §2) verify like any other in an ordinary request.
    ("agent-minted manifest token on a segment", dict(path="/videos/abc/720p/seg1.ts", query="token=" + MANIFEST_ABC),
     "valid"),
    ("agent-minted manifest path token", dict(path="/videos/abc/720p/index.m3u8",
                                              query="token=" + tok(path="/videos/abc/720p/index.m3u8", via="manifest")),
     "valid"),
    ("agent-minted session cookie", dict(path="/videos/abc/720p/seg1.ts", client_ip="203.0.113.7",
                                         cookies=["vd_token=" + SESSION_ABC_IP]), "valid"),
    ("agent-minted token in the path carrier", dict(path=in_path(MANIFEST_ABC, "abc/seg1.ts")), "valid"),
    ("agent-minted manifest token outside its prefix", dict(path="/videos/other/a.mp4", query="token=" + MANIFEST_ABC),
     "wrong_scope"),
    # Missing.
    ("no carrier at all", dict(path=P), "missing"),
    ("only unrelated query parameters", dict(path=P, query="t=42"), "missing"),
    ("basic authorization is not a token", dict(path=P, authorization="Basic dXNlcjpwYXNz"), "missing"),
    ("other cookies only", dict(path=P, cookies=["theme=dark"]), "missing"),
    # Malformed.
    ("unknown version", dict(path=P, query="token=v2" + GOOD[2:]), "malformed"),
    ("two parts", dict(path=P, query="token=" + GOOD.rsplit(".", 1)[0]), "malformed"),
    ("four parts", dict(path=P, query="token=" + GOOD + ".x"), "malformed"),
    ("base64 padding", dict(path=P, query="token=" + GOOD.split(".")[0] + "." + GOOD.split(".")[1] + "=." + GOOD.split(".")[2]),
     "malformed"),
    ("standard base64 alphabet", dict(path=P, query="token=" + GOOD[:-1] + "%2F"), "malformed"),
    ("signature of the wrong length", dict(path=P, query="token=" + GOOD[:-1]), "malformed"),
    ("claims text with four lines", dict(path=P, query="token=v1." + b64url(f"{A}\n{T + 3600}\n\npath:{P}".encode())
                                         + "." + mac(A, f"{A}\n{T + 3600}\n\npath:{P}")), "malformed"),
    ("exp with a leading zero", dict(path=P, query="token=" + compact(A, 0, "", text=f"{A}\n0{T + 3600}\n\npath:{P}\n")),
     "malformed"),
    ("exp with a sign", dict(path=P, query="expires=%2B" + str(T + 3600) + "&kid=k-active&signature=" +
                            mac(A, claims_text(A, T + 3600, "path:" + P))), "malformed"),
    ("nbf after exp", dict(path=P, query="token=" + tok(nbf=T + 3601)), "malformed"),
    ("kid with a forbidden character", dict(path=P, query="token=" + compact(A, 0, "", text=f"k.active\n{T + 3600}\n\npath:{P}\n")),
     "malformed"),
    ("unknown scope kind", dict(path=P, query="token=" + compact(A, 0, "", text=f"{A}\n{T + 3600}\n\nfolder:/videos/\n")),
     "malformed"),
    ("prefix scope without trailing slash", dict(path=P, query="token=" + tok(prefix="/videos")), "malformed"),
    ("scope path not canonical", dict(path=P, query="token=" + tok(path="/videos/./a.mp4")), "malformed"),
    ("ip claim with host bits set", dict(path=P, client_ip="10.1.2.3", query="token=" + tok(ip="10.1.2.3/8")), "malformed"),
    ("ip claim without a length", dict(path=P, client_ip="203.0.113.7", query="token=" + tok(ip="203.0.113.7")), "malformed"),
    ("ipv6 claim not in RFC 5952 form", dict(path=P, client_ip="2001:db8::1",
                                             query="token=" + tok(ip="2001:DB8:0:0:0:0:0:1/128")), "malformed"),
    ("token and key together", dict(path=P, query="token=" + GOOD + "&key=" + GOOD), "malformed"),
    ("token twice", dict(path=P, query="token=" + GOOD + "&token=" + GOOD), "malformed"),
    ("token and signed-url parameters together", dict(path=P, query=q() + "&token=" + GOOD), "malformed"),
    ("signed-url parameters without kid", dict(path=P, query="expires=" + str(T + 3600) + "&signature=" +
                                              mac(A, claims_text(A, T + 3600, "path:" + P))), "malformed"),
    ("signed-url parameter twice", dict(path=P, query=q() + "&expires=" + str(T + 3600)), "malformed"),
    ("malformed bearer token", dict(path=P, authorization="Bearer not-a-token"), "malformed"),
    ("sixth line that is not a via claim", dict(path=P, query="token=" + compact(A, 0, "", text=LINES5 + "\nvia:other")),
     "malformed"),
    ("via value in another case", dict(path=P, query="token=" + compact(A, 0, "", text=LINES5 + "\nvia:Manifest")),
     "malformed"),
    ("empty sixth line (a trailing line feed)", dict(path=P, query="token=" + compact(A, 0, "", text=LINES5 + "\n")),
     "malformed"),
    ("seventh line after a via claim", dict(path=P, query="token=" + compact(A, 0, "",
                                                                        text=LINES5 + "\nvia:manifest\nvia:manifest")),
     "malformed"),
    # Unknown key id.
    ("kid not in the keyring", dict(path=P, query="token=" + tok(kid="k-other", key=secret("other"))), "unknown_kid"),
    ("retiring key after accept_until", dict(path=P, query="token=" + tok(kid="k-retired")), "unknown_kid"),
    # Bad signature.
    ("last signature character changed", dict(path=P, query="token=" + flip_last(GOOD)), "bad_signature"),
    ("expires changed in a signed URL", dict(path=P, query=q().replace(f"expires={T + 3600}", f"expires={T + 3601}")),
     "bad_signature"),
    ("signed URL moved to another path", dict(path="/videos/b.mp4", query=q()), "bad_signature"),
    ("signed by another key under an accepted kid", dict(path=P, query="token=" + tok(key=secret("retiring"))), "bad_signature"),
    ("ip parameter removed from a signed URL", dict(path=P, client_ip="198.51.100.1",
                                                    query=q(ip="203.0.113.7/32").replace("&ip=203.0.113.7%2F32", "")),
     "bad_signature"),
    ("bad signature wins over expiry", dict(path=P, query="token=" + flip_last(tok(exp=T - 3600))), "bad_signature"),
    ("via line removed from an agent-minted token", dict(path="/videos/abc/seg1.ts", query="token=" + strip_via(MANIFEST_ABC)),
     "bad_signature"),
    # Time.
    ("expired: now = exp + skew + 1", dict(now=T + 3600 + SKEW + 1, path=P, query="token=" + GOOD), "expired"),
    ("expired wins over wrong scope", dict(path="/videos/b.mp4", query="token=" + tok(exp=T - 3600)), "expired"),
    ("not yet valid: now = nbf - skew - 1", dict(path=P, query="token=" + tok(nbf=T + SKEW + 1)), "not_yet_valid"),
    ("lifetime too long without nbf", dict(path=P, query=q(exp=T + MAX_LIFETIME + SKEW + 1)), "lifetime_too_long"),
    ("lifetime too long measured from nbf", dict(path=P, query="token=" + tok(nbf=T - 100, exp=T - 100 + MAX_LIFETIME + SKEW + 1)),
     "lifetime_too_long"),
    ("only cookie is expired", dict(path=P, cookies=["vd_token=" + tok(exp=T - 3600)]), "expired"),
    # Scope.
    ("exact token on another path", dict(path="/videos/b.mp4", query="token=" + GOOD), "wrong_scope"),
    ("prefix is a folder, not a string prefix", dict(path="/videos/abcdef.mp4", query="token=" + tok(prefix="/videos/abc/")),
     "wrong_scope"),
    ("prefix token outside its folder", dict(path="/videos/other/a.mp4", query="token=" + tok(prefix="/videos/abc/")),
     "wrong_scope"),
    # Client IP.
    ("client outside the range", dict(path=P, client_ip="203.0.114.1", query="token=" + tok(ip="203.0.113.0/24")), "wrong_ip"),
    ("client address unknown", dict(path=P, query="token=" + tok(ip="203.0.113.7/32")), "wrong_ip"),
    ("ipv6 client, ipv4 claim", dict(path=P, client_ip="2001:db8::1", query="token=" + tok(ip="203.0.113.7/32")), "wrong_ip"),
]

# Session exchange (spec §5.5): "mode": "session". Every rule of §6 applies, except that rule 8 does not compare the
# request's path with the scope: the token must have a prefix scope (else `wrong_scope`) and no `via` (else
# `derived_token`), checked in that order and before `wrong_ip`.

SP = f"{ROUTE_PREFIX}/session"

SESSION = [
    ("session exchange: prefix token", dict(path=SP, query="token=" + ABC), "valid"),
    ("session exchange: prefix token in a bearer header", dict(path=SP, authorization="Bearer " + ABC), "valid"),
    ("session exchange: prefix via signed-url parameters", dict(path=SP, query=q(path="/videos/abc/master.m3u8",
                                                                                 prefix="/videos/abc/")), "valid"),
    ("session exchange: ip-bound prefix token from its client", dict(path=SP, client_ip="203.0.113.7",
                                                                     query="token=" + tok(prefix="/videos/abc/",
                                                                                          ip="203.0.113.7/32")), "valid"),
    ("session exchange: a session token cannot renew itself", dict(path=SP, query="token=" + SESSION_ABC), "derived_token"),
    ("session exchange: a session cookie cannot renew itself", dict(path=SP, client_ip="203.0.113.7",
                                                                    cookies=["vd_token=" + SESSION_ABC_IP]),
     "derived_token"),
    ("session exchange: a manifest token is refused", dict(path=SP, query="token=" + MANIFEST_ABC), "derived_token"),
    ("session exchange: derived_token before wrong_ip", dict(path=SP, client_ip="198.51.100.1",
                                                             query="token=" + SESSION_ABC_IP), "derived_token"),
    ("session exchange: path token", dict(path=SP, query="token=" + tok(path="/videos/abc/master.m3u8")), "wrong_scope"),
    ("session exchange: signed url without prefix", dict(path=SP, query=q(path=SP)), "wrong_scope"),
    ("session exchange: wrong_scope before derived_token", dict(path=SP, query="token=" + tok(
        path="/videos/abc/720p/index.m3u8", via="manifest")), "wrong_scope"),
    ("session exchange: prefix token from another client", dict(path=SP, client_ip="198.51.100.1",
                                                                query="token=" + tok(prefix="/videos/abc/",
                                                                                     ip="203.0.113.7/32")), "wrong_ip"),
    ("session exchange: expired prefix token", dict(now=T + 3600 + SKEW + 1, path=SP, query="token=" + ABC), "expired"),
    ("session exchange: expired session token", dict(now=T + 3600 + SKEW + 1, path=SP, query="token=" + SESSION_ABC),
     "expired"),
    ("session exchange: via line removed", dict(path=SP, query="token=" + strip_via(SESSION_ABC)), "bad_signature"),
    ("session exchange: malformed via line", dict(path=SP, query="token=" + compact(
        A, 0, "", text=claims_text(A, T + 3600, "prefix:/videos/abc/") + "\nvia:other")), "malformed"),
    ("session exchange: no token", dict(path=SP), "missing"),
]

# ---------------------------------------------------------------------------------------------------------------
# Keyring documents: accepted or rejected.


def ring(*keys, version=1):
    return {"version": version, "keys": list(keys)}


def key(kid, state, sec=None, **extra):
    k = {"kid": kid, "state": state, "secret": base64.b64encode(sec or secret(kid)).decode(), "created_at": T}
    if state == "pending":
        k["activate_after"] = T + 60
    if state in ("active", "retiring"):
        k["activated_at"] = T
    if state == "retiring":
        k["retired_at"] = T + 10
        k["accept_until"] = T + 100
    k.update(extra)
    return k


KEYRINGS = [
    ("the vectors' keyring", keyring_doc(), True),
    ("one active key", ring(key("a", "active")), True),
    ("64-byte key", ring(key("a", "active", sec=secret("x") + secret("y"))), True),
    ("unknown fields are ignored", {**ring(key("a", "active", note="rotated by hand")), "generator": "test"}, True),
    ("no keys", ring(), False),
    ("starting: one pending key, no active key", ring(key("a", "pending")), True),
    ("starting: a pending key beside a retiring one", ring(key("a", "retiring"), key("b", "pending")), True),
    ("no active and no pending key", ring(key("a", "retiring")), False),
    ("two active keys", ring(key("a", "active"), key("b", "active")), False),
    ("duplicate kid", ring(key("a", "active"), key("a", "pending")), False),
    ("key shorter than 32 bytes", ring(key("a", "active", sec=b"x" * 31)), False),
    ("key longer than 64 bytes", ring(key("a", "active", sec=b"x" * 65)), False),
    ("secret not base64", ring(key("a", "active", secret="!!!")), False),
    ("unknown state", ring(key("a", "active"), key("b", "revoked")), False),
    ("retiring key without accept_until", ring(key("a", "active"), {k: v for k, v in key("b", "retiring").items()
                                                                    if k != "accept_until"}), False),
    ("kid with a forbidden character", ring(key("a/b", "active")), False),
    ("version 2", ring(key("a", "active"), version=2), False),
]


def signs_with(doc: dict) -> dict:
    """What a signer built from a valid keyring does (spec §7.2): sign with the active key, or, for a starting
    keyring, refuse and name the pending key that becomes active first and when."""
    active = [k["kid"] for k in doc["keys"] if k["state"] == "active"]
    if active:
        return {"kid": active[0]}
    first = min((k for k in doc["keys"] if k["state"] == "pending"), key=lambda k: k["activate_after"])
    return {"error": "not_yet_active", "kid": first["kid"], "activate_after": first["activate_after"]}


def check_ips() -> None:
    import ipaddress
    for given, want in IPS:
        try:
            net = ipaddress.ip_network(given, strict=False)
            if isinstance(net, ipaddress.IPv6Network) and net.network_address.ipv4_mapped:
                raise ValueError("mapped")
            got = net.compressed
        except ValueError:
            got = None
        assert got == want, (given, got, want)


def main() -> None:
    check_ips()
    doc = {
        "description": "Test vectors for docs/token-format.md (VideoDelivery token format v1). Generated by "
                       "testdata/gen_vectors.py; do not edit by hand. A verify vector with \"mode\": \"session\" is a session "
                       "exchange (spec §5.5, the verifier's session check); without \"mode\" it is an ordinary request. "
                       "Sign vectors whose claims have \"via\" are tokens only an agent mints: compact token only, "
                       "no URL forms. A valid keyring vector's \"signs_with\" says what a signer built from it does: "
                       "sign with \"kid\", or, for a starting keyring (no active key), refuse with "
                       "\"error\": \"not_yet_active\", naming the pending key and its activate_after.",
        "policy": {"clock_skew": SKEW, "max_lifetime": MAX_LIFETIME},
        "now": T,
        "base_url": BASE_URL,
        "route_prefix": ROUTE_PREFIX,
        "keyring": keyring_doc(),
        "paths": [
            {"name": n, "raw": raw, "kind": "prefix" if prefix else "path",
             **({"canonical": canon} if canon is not None else {"valid": False})}
            for n, raw, canon, prefix in PATHS
        ],
        "ip_ranges": [{"input": i, **({"canonical": c} if c else {"valid": False})} for i, c in IPS],
        "sign": [sign_vector(n, c) for n, c in SIGN],
        "verify": [
            {"name": n, "now": r.pop("now", T), "request": r, "verdict": v}
            for n, r, v in VERIFY
        ] + [
            {"name": n, "mode": "session", "now": r.pop("now", T), "request": r, "verdict": v}
            for n, r, v in SESSION
        ],
        "keyrings": [
            {"name": n, "document": d, "valid": ok, **({"signs_with": signs_with(d)} if ok else {})}
            for n, d, ok in KEYRINGS
        ],
    }
    names = [v["name"] for v in doc["verify"]]
    assert len(names) == len(set(names)), "duplicate verify vector names"
    out = json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    if len(sys.argv) > 1 and sys.argv[1] == "--check":
        current = Path(__file__).with_name("token-vectors.json").read_text(encoding="utf-8")
        if current != out:
            sys.exit("testdata/token-vectors.json is stale: run python3 testdata/gen_vectors.py")
        return
    Path(__file__).with_name("token-vectors.json").write_text(out, encoding="utf-8")
    print(f"{len(doc['verify'])} verify ({len(SESSION)} session exchange), {len(doc['sign'])} sign, {len(doc['paths'])} path, "
          f"{len(doc['ip_ranges'])} ip, {len(doc['keyrings'])} keyring vectors")


if __name__ == "__main__":
    main()
