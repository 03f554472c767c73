#!/usr/bin/env python3
"""Writes seed inputs for every fuzz target into fuzz/corpus/<target>/ (run by scripts/fuzz.sh).

Seeds come from testdata/token-vectors.json (raw paths, queries, headers, tokens) and from the small playlists and
MPDs below. Each file is named after a hash of its content, so rerunning adds nothing twice and never removes what
libFuzzer found. The byte layouts match the header comments of fuzz/fuzz_targets/*.rs.
"""

import hashlib
import ipaddress
import json
import pathlib
import struct
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
CORPUS = ROOT / "fuzz" / "corpus"


def write(target, data):
    if isinstance(data, str):
        data = data.encode()
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / ("seed-" + hashlib.sha1(data).hexdigest()[:16])).write_bytes(data)


def token_verify(v):
    base_now = v["now"]
    for i, case in enumerate(v["verify"]):
        r = case["request"]
        flags = 0
        if "query" in r:
            flags |= 1
        if "authorization" in r:
            flags |= 2
        if "cookies" in r:
            flags |= 4
        ip_bytes = b"\0\0\0\0"
        if r.get("client_ip"):
            ip = ipaddress.ip_address(r["client_ip"])
            if ip.version == 4:
                flags |= 16
                ip_bytes = ip.packed
            elif ip.packed[:12] == ipaddress.ip_address("2001:db8::").packed[:12]:
                flags |= 16 | 32
                ip_bytes = ip.packed[12:]
        offset = max(-32768, min(32767, (case["now"] - base_now) // 8))
        header = bytes([flags]) + struct.pack("<h", offset) + ip_bytes
        # Round-trip knobs vary with the seed so every carrier, key and scope kind is seeded.
        header += bytes([(i * 37) & 0xFF]) + struct.pack("<H", 600 + 97 * i) + bytes([i * 11 & 0xFF, 0x41])
        fields = [r.get("path", ""), r.get("query", ""), r.get("authorization", ""), "\t".join(r.get("cookies", [])), ""]
        write("token_verify", header + "\n".join(fields).encode())
    for s in v["sign"]:
        if s.get("claims", {}).get("scope", {}).get("kind") == "prefix" and "token" in s:
            header = bytes([8]) + b"\0" * 11
            write("token_verify", header + "\n".join([s["path"], "", "", "", s["token"]]).encode())


def canonical_path(v):
    for p in v["paths"]:
        write("canonical_path", p["raw"])
    for case in v["verify"]:
        write("canonical_path", case["request"].get("path", "/"))


def carrier(v):
    route = v["route_prefix"]
    tokens = [s["token"] for s in v["sign"] if "token" in s][:4]
    for i, tok in enumerate(tokens):
        write("carrier", bytes([2]) + f"{route}/t/{tok}/film/master.m3u8".encode())
        write("carrier", bytes([0]) + f"/t/{tok}/a.mp4".encode())
        write("carrier", bytes([3]) + f"{route}/t/{tok}".encode())
    for p in v["paths"][:12]:
        write("carrier", bytes([2]) + f"{route}/t/v1.a.b{p['raw']}".encode())
    write("carrier", bytes([9]) + b"/custom/prefix\n/custom/prefix/t/v1.x.y/seg%2F..%2Fa.ts")


def range_(v):
    headers = ["bytes=0-99", "bytes=0-0", "bytes=0-1", "bytes=990-2000", "bytes=500-", "bytes=-100",
               "bytes=-5000", "bytes=1000-", "bytes=-0", "bytes=0-1,5-9", "bytes=2000-,3000-", " bytes=1-2 ",
               "items=0-1", "bytes=", "bytes=a-b", "bytes=5-1", "bytes=--1", "bytes=99999999999999999999-"]
    for h in headers:
        write("range", bytes([6]) + struct.pack("<Q", 1000) + h.encode())
        write("range", bytes([2, 200]) + b"\0" * 7 + h.encode())
    write("range", bytes([0]) + b"\0" * 8 + b"bytes=0-")
    write("range", bytes([1]) + b"\0" * 8)
    write("range", bytes([4]) + b"\0" * 8 + b"bytes=18446744073709551614-")


MEDIA = """#EXTM3U
#EXT-X-VERSION:7
#EXT-X-TARGETDURATION:4
#EXT-X-MAP:URI="init.mp4",BYTERANGE="720@0"
#EXT-X-KEY:METHOD=AES-128,URI="key.bin",IV=0x00000000000000000000000000000001
#EXTINF:4.0,
seg0.m4s
#EXT-X-BYTERANGE:500@0
#EXTINF:4.0,
all.m4s?v=2#t=1
#EXTINF:4.0,
/videos/film/seg2.m4s
#EXTINF:4.0,
https://cdn.other.example/ad.m4s
#EXT-X-KEY:METHOD=SAMPLE-AES,URI="skd://key-id",KEYFORMAT="com.apple.streamingkeydelivery"
#EXT-X-ENDLIST
"""

MASTER = """#EXTM3U\r
#EXT-X-INDEPENDENT-SEGMENTS\r
#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="a",NAME="en",DEFAULT=YES,URI="audio/en.m3u8"\r
#EXT-X-SESSION-DATA:DATA-ID="x",VALUE="SOURCEURI=a.ts"\r
#EXT-X-STREAM-INF:BANDWIDTH=800000,RESOLUTION=640x360,AUDIO="a"\r
360p/index.m3u8\r
#EXT-X-STREAM-INF:BANDWIDTH=2500000,RESOLUTION=1280x720,AUDIO="a"\r
  720p/index.m3u8?x=1&  \r
#EXT-X-I-FRAME-STREAM-INF:BANDWIDTH=100000,URI="iframes.m3u8"\r
http://media.example:8080/videos/film/1080p/index.m3u8\r
//other.example/videos/film/x.m3u8\r
../../elsewhere/index.m3u8\r
"""

VARIABLES = """#EXTM3U
#EXT-X-DEFINE:NAME="host",VALUE="other.example"
#EXTINF:4,
//{$host}/seg.ts
#EXTINF:4,
seg%201.ts
./a/../b.ts
"""

MPD_TEMPLATE = """<?xml version="1.0" encoding="utf-8"?>
<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static" mediaPresentationDuration="PT6S">
  <!-- a comment -->
  <Period id="0" start="PT0S">
    <AdaptationSet id="0" contentType="video" segmentAlignment="true">
      <SegmentTemplate timescale="12800" initialization="init-$RepresentationID$.m4s" media="chunk-$RepresentationID$-$Number%05d$.m4s" startNumber="1" duration="25600"/>
      <Representation id="v0" mimeType="video/mp4" codecs="avc1.64001e" bandwidth="300000" width="320" height="180"/>
      <Representation id="v1" mimeType="video/mp4" codecs="avc1.64001f" bandwidth="900000" width="640" height="360"/>
    </AdaptationSet>
    <AdaptationSet id="1" contentType="audio">
      <BaseURL>audio/</BaseURL>
      <Representation id="a1" mimeType="audio/mp4" bandwidth="64000">
        <SegmentList duration="2"><Initialization sourceURL="init.mp4"/><SegmentURL media="a1.m4s" mediaRange="0-99"/><SegmentURL media="a2.m4s" index="a2.idx"/></SegmentList>
      </Representation>
    </AdaptationSet>
    <AdaptationSet id="2" contentType="text">
      <BaseURL>https://subs.other.example/</BaseURL>
      <Representation id="t1" mimeType="text/vtt" bandwidth="100"><SegmentTemplate media="sub-$Number$.vtt"/></Representation>
    </AdaptationSet>
  </Period>
</MPD>
"""

MPD_BASES = """<MPD xmlns="urn:mpeg:dash:schema:mpd:2011"><BaseURL>/videos/film/</BaseURL><Period>
<AdaptationSet><BaseURL>https://cdn.example/films?a=1&amp;b=2/</BaseURL><SegmentTemplate media="v-$Number$.m4s"/></AdaptationSet>
<AdaptationSet><BaseURL>au&#100;io/</BaseURL><SegmentList><SegmentURL media="a1.m4s"/></SegmentList></AdaptationSet>
<AdaptationSet><Representation id="r1"><BaseURL>720p/</BaseURL><SegmentBase indexRange="0-99"><Initialization sourceURL="init.mp4"/></SegmentBase></Representation></AdaptationSet>
</Period></MPD>
"""

MPD_ON_DEMAND = """<?xml version="1.0"?>
<MPD profiles="urn:mpeg:dash:profile:isoff-on-demand:2011" type="static">
 <Period>
  <AdaptationSet mimeType="video/mp4">
   <Representation id="1080" bandwidth="5000000"><BaseURL>video_1080.mp4</BaseURL><SegmentBase indexRange="0-999"/></Representation>
   <Representation id="720" bandwidth="2500000"><BaseURL>http://media.example/videos/film/video_720.mp4</BaseURL><SegmentBase indexRange="0-999"><RepresentationIndex sourceURL="idx720.sidx"/></SegmentBase></Representation>
  </AdaptationSet>
 </Period>
</MPD>
"""

# A common layout: the template at AdaptationSet level, a BaseURL per Representation; single-quoted attributes.
MPD_REP_BASES = """<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type='static'><Period><AdaptationSet mimeType="video/mp4">
<SegmentTemplate initialization="$RepresentationID$/init.mp4" media="$RepresentationID$/$Number$.m4s" startNumber="1"/>
<Representation id="v720" bandwidth="2500000"><BaseURL>720p/</BaseURL></Representation>
<Representation id="v360" bandwidth="800000"/>
</AdaptationSet>
<AdaptationSet mimeType='audio/mp4' lang='en'><SegmentList duration="2"><SegmentURL media='a1.m4s' mediaRange='0-99'/></SegmentList>
<Representation id="a"><BaseURL>audio/</BaseURL></Representation></AdaptationSet>
</Period></MPD>
"""


def manifests():
    for kind, samples in (("hls_rewrite", [MEDIA, MASTER, VARIABLES]),
                          ("dash_rewrite", [MPD_TEMPLATE, MPD_BASES, MPD_ON_DEMAND, MPD_REP_BASES])):
        for body in samples:
            # Control byte: host, chunking, grant kind and path vary across seeds.
            for c in (0x00, 0x05, 0x0A, 0x13, 0x2F, 0x51, 0x7C):
                write(kind, bytes([c]) + body.encode())


def main():
    vectors = json.loads((ROOT / "testdata" / "token-vectors.json").read_text())
    token_verify(vectors)
    canonical_path(vectors)
    carrier(vectors)
    range_(vectors)
    manifests()
    counts = {d.name: len(list(d.iterdir())) for d in sorted(CORPUS.iterdir()) if d.is_dir()}
    print("corpus sizes after seeding: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
