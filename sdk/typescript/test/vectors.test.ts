/// <reference types="node" />
// The shared vectors (testdata/token-vectors.json): the same file the Rust crate is checked against.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import {
  KeyringError,
  NotYetActiveError,
  SignError,
  Signer,
  canonicalIpRange,
  canonicalPath,
  parseKeyring,
  claimsText,
  sign,
  type Claims,
  type PathKind,
  type SignOptions,
} from "../src/index.js";

interface Vectors {
  now: number;
  base_url: string;
  route_prefix: string;
  keyring: unknown;
  paths: { name: string; raw: string; kind: PathKind; canonical?: string }[];
  ip_ranges: { input: string; canonical?: string }[];
  // Vectors whose claims have `via` (tokens only an agent mints) have no URL forms.
  sign: { name: string; claims: Claims; path: string; signing_input: string; signature: string; token: string; url?: string; token_url?: string; path_url?: string }[];
  keyrings: {
    name: string;
    document: { keys?: { secret?: string }[] };
    valid: boolean;
    signs_with?: { kid: string; error?: "not_yet_active"; activate_after?: number };
  }[];
}

const vectors: Vectors = JSON.parse(
  readFileSync(new URL("../../../../testdata/token-vectors.json", import.meta.url), "utf8"),
);

test("path vectors", () => {
  assert.ok(vectors.paths.length >= 20);
  for (const v of vectors.paths) {
    if (v.canonical !== undefined) assert.equal(canonicalPath(v.raw, v.kind), v.canonical, v.name);
    else assert.throws(() => canonicalPath(v.raw, v.kind), { name: "PathError" }, v.name);
  }
});

test("ip range vectors", () => {
  for (const v of vectors.ip_ranges) {
    if (v.canonical !== undefined) {
      assert.equal(canonicalIpRange(v.input), v.canonical, v.input);
      assert.equal(canonicalIpRange(v.canonical), v.canonical, `${v.canonical} is a fixed point`);
    } else {
      assert.throws(() => canonicalIpRange(v.input), { name: "IpRangeError" }, v.input);
    }
  }
});

test("sign vectors: signing input, signature, token and both URL forms", async () => {
  const ring = parseKeyring(vectors.keyring);
  assert.ok(vectors.sign.length >= 8);
  const derived = new Set<string>();
  for (const v of vectors.sign) {
    const key = ring.keys.find((k) => k.kid === v.claims.kid)!;
    const signed = await sign(v.claims, key.secret);
    assert.equal("VD1\n" + claimsText(v.claims), v.signing_input, v.name);
    assert.equal(signed.signingInput, v.signing_input, v.name);
    assert.equal(signed.signature, v.signature, v.name);
    assert.equal(signed.token, v.token, v.name);

    if (v.claims.via !== undefined) {
      // Minted by an agent, never by a backend: compact token only (spec §5.1, §5.5, §5.6).
      assert.equal(v.url ?? v.token_url ?? v.path_url, undefined, v.name);
      derived.add(v.claims.via);
      continue;
    }
    assert.ok(v.url !== undefined && v.token_url !== undefined, v.name);

    // The vectors sign with the active key, so the high-level Signer must produce the same URLs.
    const signer = await Signer.create(ring);
    const opts = {
      baseUrl: vectors.base_url,
      path: v.path,
      expiresAt: v.claims.exp,
      ...(v.claims.nbf !== undefined ? { notBefore: v.claims.nbf } : {}),
      ...(v.claims.scope.kind === "prefix" ? { prefix: v.claims.scope.path } : {}),
      ...(v.claims.ip !== undefined ? { ip: v.claims.ip } : {}),
    };
    assert.equal(await signer.signUrl(opts), v.url, v.name);
    assert.equal(await signer.signUrl({ ...opts, carrier: "token" }), v.token_url, v.name);
    assert.equal(await signer.signToken(opts), v.token, v.name);
    if (v.path_url !== undefined) {
      assert.equal(await signer.signUrl({ ...opts, carrier: "path", routePrefix: vectors.route_prefix }), v.path_url, v.name);
    } else {
      await assert.rejects(signer.signUrl({ ...opts, carrier: "path", routePrefix: vectors.route_prefix }), SignError, v.name);
    }
  }
  assert.deepEqual([...derived].sort(), ["manifest", "session"], "sign vectors cover both via values");
});

test("via: five lines without it, a sixth line with it, and nothing else", async () => {
  const base: Claims = { kid: "k-active", exp: vectors.now, scope: { kind: "prefix", path: "/videos/abc/" } };
  assert.equal(claimsText(base).split("\n").length, 5);
  assert.equal(claimsText({ ...base, via: "manifest" }), claimsText(base) + "\nvia:manifest");
  assert.equal(claimsText({ ...base, via: "session" }), claimsText(base) + "\nvia:session");
  assert.throws(() => claimsText({ ...base, via: "other" as Claims["via"] }), SignError);
});

test("the Signer never mints via, whatever it is given", async () => {
  const signer = await Signer.create(parseKeyring(vectors.keyring));
  // Not a SignOptions field: a caller that forces it in gets an ordinary five-line token.
  const opts = { path: "/videos/abc/master.m3u8", prefix: true, expiresIn: 60, now: vectors.now, via: "session" };
  assert.equal(signer.claims(opts as SignOptions).via, undefined);
  const token = await signer.signToken(opts as SignOptions);
  const claims = new TextDecoder().decode(
    Uint8Array.from(atob(token.split(".")[1]!.replace(/-/g, "+").replace(/_/g, "/")), (c) => c.charCodeAt(0)),
  );
  assert.equal(claims.split("\n").length, 5, claims);
  assert.ok(!claims.includes("via:"), claims);
});

test("keyring vectors", async () => {
  for (const v of vectors.keyrings) {
    if (!v.valid) {
      assert.throws(() => parseKeyring(v.document), KeyringError, v.name);
      continue;
    }
    const ring = parseKeyring(v.document);
    // What a signer built from it does (spec §7.2): sign with the active key, or refuse while starting.
    const want = v.signs_with!;
    if (want.error === undefined) {
      assert.equal((await Signer.create(ring)).kid, want.kid, v.name);
      continue;
    }
    assert.equal(want.error, "not_yet_active", v.name);
    assert.equal(ring.active, undefined, v.name);
    await assert.rejects(Signer.create(ring), (e: unknown) => {
      assert.ok(e instanceof NotYetActiveError && e instanceof SignError, v.name);
      assert.equal(e.kid, want.kid, v.name);
      assert.equal(e.activateAfter, want.activate_after, v.name);
      assert.ok(e.message.includes(`"${want.kid}"`) && e.message.includes(String(want.activate_after)), e.message);
      for (const key of v.document.keys ?? []) assert.ok(!e.message.includes(key.secret!), e.message);
      return true;
    });
  }
});

test("keyring errors never contain a secret", () => {
  for (const v of vectors.keyrings.filter((k) => !k.valid)) {
    try {
      parseKeyring(JSON.stringify(v.document));
      assert.fail(`${v.name} must be refused`);
    } catch (e) {
      const message = (e as Error).message;
      for (const key of v.document.keys ?? []) {
        if (key.secret && key.secret.length >= 8) assert.ok(!message.includes(key.secret), message);
      }
    }
  }
});

test("a pending key is never used to sign", async () => {
  const ring = parseKeyring(vectors.keyring);
  const signer = await Signer.create(ring);
  assert.equal(signer.kid, "k-active");
  assert.ok(ring.keys.some((k) => k.state === "pending"));
  const token = await signer.signToken({ path: "/videos/a.mp4", expiresIn: 60, now: vectors.now });
  const claims = new TextDecoder().decode(
    Uint8Array.from(atob(token.split(".")[1]!.replace(/-/g, "+").replace(/_/g, "/")), (c) => c.charCodeAt(0)),
  );
  assert.ok(claims.startsWith("k-active\n"), claims);
});

test("prefix: true scopes to the folder of the path", async () => {
  const signer = await Signer.create(parseKeyring(vectors.keyring));
  const url = await signer.signUrl({ path: "/videos/abc/master.m3u8", prefix: true, expiresIn: 60, now: 1000 });
  assert.equal(url.split("?")[1]!.split("&").find((p) => p.startsWith("prefix=")), "prefix=%2Fvideos%2Fabc%2F");
});

test("bad options are refused with a clear error", async () => {
  const signer = await Signer.create(parseKeyring(vectors.keyring));
  await assert.rejects(signer.signUrl({ path: "/videos/../etc/passwd", expiresIn: 60 }), /'\.' or '\.\.' segment/);
  await assert.rejects(signer.signUrl({ path: "/videos/a.mp4" }), /expiresIn/);
  await assert.rejects(signer.signUrl({ path: "/videos/a.mp4", expiresIn: 60, prefix: "/other/" }), /not under the prefix/);
  await assert.rejects(signer.signUrl({ path: "/videos/a.mp4", expiresIn: 60, ip: "::ffff:1.2.3.4" }), /IPv4-mapped/);
});
