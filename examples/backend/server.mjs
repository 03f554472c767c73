// A minimal backend that mints VideoDelivery signed URLs: the "return a signed URL instead of proxying the video"
// route of the README, as a plain Node.js server (node:http, no framework) that signs with @videodelivery/sign and
// the keyring Secret mounted into its pod.
//
//   GET /url?path=/videos/films/a.mp4[&base=http://media.example.com][&carrier=query|token|path][&prefix=1]
//       -> 200 {"url": "...", "kid": "...", "expires": 1790000000}
//   GET /healthz -> 200 {"ok": true}
//
// Settings (environment):
//   VD_KEYRING_FILE    the mounted keyring (default /var/run/videodelivery/keyring.json)
//   VD_BASE_URL        scheme and host of the agents' Service or CDN, used when a request gives no `base`
//   VD_TOKEN_LIFETIME  seconds a URL stays valid (default 3600; at most the VideoDelivery's maxTokenLifetime)
//   PORT               where to listen (default 8080)
import { createServer } from "node:http";
import { readFile } from "node:fs/promises";
import { IpRangeError, KeyringError, NotYetActiveError, PathError, SignError, Signer, parseKeyring } from "@videodelivery/sign";

const KEYRING_FILE = process.env.VD_KEYRING_FILE || "/var/run/videodelivery/keyring.json";
const BASE_URL = process.env.VD_BASE_URL || undefined;
const TOKEN_LIFETIME = Number(process.env.VD_TOKEN_LIFETIME || 3600);
const PORT = Number(process.env.PORT || 8080);
const CARRIERS = ["query", "token", "path"];

if (!Number.isSafeInteger(TOKEN_LIFETIME) || TOKEN_LIFETIME <= 0) {
  console.error("VD_TOKEN_LIFETIME must be a positive number of seconds");
  process.exit(2);
}
if (BASE_URL !== undefined && checkBase(BASE_URL) !== undefined) {
  console.error(`VD_BASE_URL: ${checkBase(BASE_URL)}`);
  process.exit(2);
}

class HttpError extends Error {
  constructor(status, code, message, headers = {}) {
    super(message);
    this.status = status;
    this.code = code;
    this.headers = headers;
  }
}

// The keyring is read again on every request: when the operator rotates keys, the kubelet writes the new Secret
// next to the old one and swaps a symlink, so the path always names a complete file, and a signer built from an
// older read would keep signing with a key that is no longer active. Reading a small file is cheap; the signer
// (which imports the key into Web Crypto) is rebuilt only when the text has changed.
let loaded = { text: undefined, signer: undefined };
async function currentSigner() {
  let text;
  try {
    text = await readFile(KEYRING_FILE, "utf8");
  } catch (e) {
    throw new HttpError(503, "keyring_unavailable", `cannot read the keyring ${KEYRING_FILE}: ${e.code ?? e.message}`);
  }
  if (text === loaded.text) return loaded.signer;
  let signer;
  try {
    signer = await Signer.create(parseKeyring(text));
  } catch (e) {
    if (e instanceof NotYetActiveError) {
      // A keyring the operator recreated: its first key is pending until agents can have loaded it.
      const wait = Math.max(1, e.activateAfter - Math.floor(Date.now() / 1000));
      throw new HttpError(503, "no_active_key", e.message, { "retry-after": String(wait) });
    }
    // KeyringError messages name keys by id, never by secret.
    if (e instanceof KeyringError) throw new HttpError(503, "keyring_invalid", e.message);
    throw e;
  }
  loaded = { text, signer };
  return signer;
}

/** Why `base` cannot be a base URL, or undefined when it can. */
function checkBase(base) {
  let u;
  try {
    u = new URL(base);
  } catch {
    return "base must be an absolute http(s) URL";
  }
  if (u.protocol !== "http:" && u.protocol !== "https:") return "base must be an http or https URL";
  if (u.username || u.password || u.search || u.hash) return "base must have no credentials, query or fragment";
  return undefined;
}

async function signedUrl(params) {
  const path = params.get("path");
  if (!path) throw new HttpError(400, "bad_request", "give the object's path, e.g. path=/videos/films/a.mp4");
  const base = params.get("base") ?? BASE_URL;
  if (base === undefined) throw new HttpError(400, "bad_request", "give base (or set VD_BASE_URL)");
  const baseError = checkBase(base);
  if (baseError !== undefined) throw new HttpError(400, "bad_request", baseError);
  const carrier = params.get("carrier") ?? "query";
  if (!CARRIERS.includes(carrier)) throw new HttpError(400, "bad_request", `carrier must be one of ${CARRIERS.join(", ")}`);
  const prefix = params.get("prefix");
  if (prefix !== null && prefix !== "0" && prefix !== "1") throw new HttpError(400, "bad_request", "prefix must be 0 or 1");

  // A real backend checks here that the signed-in viewer may watch `path` (its session, the user's purchases or
  // subscription, the video's visibility) and answers 403 otherwise: whoever holds the URL can fetch the video
  // until it expires.

  const signer = await currentSigner();
  const expires = Math.floor(Date.now() / 1000) + TOKEN_LIFETIME;
  try {
    const url = await signer.signUrl({
      baseUrl: base,
      path,
      expiresAt: expires,
      carrier,
      // The path carrier is for playlists whose relative URIs inherit the token: it signs the whole folder.
      prefix: prefix === "1" || carrier === "path" ? true : undefined,
    });
    return { url, kid: signer.kid, expires };
  } catch (e) {
    if (e instanceof PathError || e instanceof IpRangeError || e instanceof SignError) {
      throw new HttpError(400, "bad_request", e.message);
    }
    throw e;
  }
}

function reply(res, status, body, headers = {}) {
  res.writeHead(status, {
    "content-type": "application/json",
    // A signed URL is for one viewer: no shared cache may keep it.
    "cache-control": "private, no-store",
    ...headers,
  });
  res.end(JSON.stringify(body));
}

const server = createServer(async (req, res) => {
  let url;
  try {
    url = new URL(req.url ?? "/", "http://backend");
  } catch {
    return reply(res, 400, { error: "bad_request", message: "malformed request target" });
  }
  if (req.method !== "GET" && req.method !== "HEAD") {
    return reply(res, 405, { error: "method_not_allowed", message: "use GET" }, { allow: "GET, HEAD" });
  }
  try {
    if (url.pathname === "/healthz") return reply(res, 200, { ok: true });
    if (url.pathname === "/url") return reply(res, 200, await signedUrl(url.searchParams));
    return reply(res, 404, { error: "not_found", message: "GET /url?path=... or /healthz" });
  } catch (e) {
    if (e instanceof HttpError) return reply(res, e.status, { error: e.code, message: e.message }, e.headers);
    console.error("unexpected error:", e instanceof Error ? e.name + ": " + e.message : "unknown");
    return reply(res, 500, { error: "internal", message: "internal error" });
  }
});

server.listen(PORT, () => console.log(`backend listening on :${PORT}, keyring ${KEYRING_FILE}`));

// In a container this process is PID 1, which gets no default signal handlers: stop on SIGTERM (pod deletion, a
// rollout) instead of waiting for the kubelet's SIGKILL.
for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => {
    server.close(() => process.exit(0));
    server.closeIdleConnections();
    setTimeout(() => process.exit(0), 5000).unref();
  });
}
