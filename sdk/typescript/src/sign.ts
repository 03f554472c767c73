// Signing (spec §4, §5). Web Crypto only, so it runs in Node.js, Next.js middleware and edge runtimes alike.

import { base64url } from "./base64.js";
import { canonicalIpRange } from "./ip.js";
import { type Key, type Keyring, nextPending } from "./keyring.js";
import { PathError, checkCanonical, encodePath } from "./path.js";

/** Everything a token says, in canonical form. */
export interface Claims {
  kid: string;
  /** Last valid second, Unix time. */
  exp: number;
  /** First valid second, Unix time. */
  nbf?: number;
  scope: { kind: "path" | "prefix"; path: string };
  /** Canonical CIDR, e.g. `203.0.113.7/32`. */
  ip?: string;
  /**
   * Marks a token an agent minted from another one (spec §2): `manifest` for the URIs of a rewritten playlist,
   * `session` for a session cookie. Backends never mint it ({@link Signer} has no option for it); it is here so that
   * {@link claimsText} and {@link sign} reproduce agent-minted tokens, e.g. the shared test vectors.
   */
  via?: Via;
}

/** Values of the `via` claim. */
export type Via = "manifest" | "session";

/** The exact bytes the MAC covers, their signature, and the compact token. */
export interface Signed {
  signingInput: string;
  signature: string;
  token: string;
}

const utf8 = new TextEncoder();

/**
 * The claims text: the signing input without its version line, and a compact token's payload. Five lines, and a
 * sixth `via:…` line only when `via` is set (spec §4).
 */
export function claimsText(c: Claims): string {
  const lines = [c.kid, String(c.exp), c.nbf === undefined ? "" : String(c.nbf), `${c.scope.kind}:${c.scope.path}`, c.ip ?? ""];
  if (c.via !== undefined) {
    if (c.via !== "manifest" && c.via !== "session") throw new SignError("via must be \"manifest\" or \"session\"");
    lines.push(`via:${c.via}`);
  }
  return lines.join("\n");
}

async function hmacKey(secret: Uint8Array): Promise<CryptoKey> {
  return crypto.subtle.importKey("raw", secret as BufferSource, { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
}

async function signWith(key: CryptoKey, claims: Claims): Promise<Signed> {
  const text = claimsText(claims);
  const signingInput = "VD1\n" + text;
  const mac = new Uint8Array(await crypto.subtle.sign("HMAC", key, utf8.encode(signingInput)));
  const signature = base64url(mac);
  return { signingInput, signature, token: `v1.${base64url(utf8.encode(text))}.${signature}` };
}

/** Signs claims with raw key bytes. Production code uses a {@link Signer}, which picks the active key. */
export async function sign(claims: Claims, secret: Uint8Array): Promise<Signed> {
  return signWith(await hmacKey(secret), claims);
}

/** What to mint. */
export interface SignOptions {
  /** Scheme and host of the agent or CDN, e.g. `https://media.example.com`. */
  baseUrl?: string;
  /** The object's decoded path as the agent serves it, e.g. `/videos/café.mp4`. */
  path: string;
  /** Lifetime in seconds from now; or give `expiresAt`. */
  expiresIn?: number;
  /** Absolute expiry, Unix seconds. */
  expiresAt?: number;
  /** Not valid before this Unix time. */
  notBefore?: number;
  /** Scope the token to a folder: a decoded prefix ending in `/`, or `true` for the folder of `path`. */
  prefix?: string | true;
  /** Bind to a client address or CIDR range (canonicalised). */
  ip?: string;
  /**
   * `query`: `?expires=…&kid=…&signature=…` (default); `token`: `?token=v1.…`; `path`: the token as a path segment,
   * `{routePrefix}/t/{token}/…`, so relative URIs in HLS and DASH playlists inherit it (needs `prefix`).
   */
  carrier?: "query" | "token" | "path";
  /** The agent's route prefix, where the path carrier goes (default `/videos`). */
  routePrefix?: string;
  /** The current Unix time; defaults to the clock. */
  now?: number;
}

/** Options that cannot make a valid token. */
export class SignError extends Error {
  override name = "SignError";
}

/**
 * The keyring is starting (spec §7.2): it has no active key yet, and its pending key may not have reached every
 * agent. Retry at `activateAfter`, once the operator has promoted the key.
 */
export class NotYetActiveError extends SignError {
  override name = "NotYetActiveError";
  constructor(
    readonly kid: string,
    readonly activateAfter: number,
  ) {
    super(
      `the keyring has no active key yet: key "${kid}" becomes active at Unix time ${activateAfter} ` +
        `(${new Date(activateAfter * 1000).toISOString()}); nothing can be signed before then`,
    );
  }
}

/** Signs with a keyring's active key, the only key a signer may use (spec §7.2). */
export class Signer {
  private constructor(
    private readonly key: Key,
    private readonly cryptoKey: CryptoKey,
  ) {}

  /** Throws {@link NotYetActiveError} for a starting keyring: it never falls back to the pending key. */
  static async create(keyring: Keyring): Promise<Signer> {
    const active = keyring.active;
    if (active === undefined) {
      // A valid keyring without an active key has a pending one.
      const pending = nextPending(keyring)!;
      throw new NotYetActiveError(pending.kid, pending.activateAfter ?? pending.createdAt);
    }
    return new Signer(active, await hmacKey(active.secret));
  }

  /** The id of the key this signer uses. */
  get kid(): string {
    return this.key.kid;
  }

  /** Canonical claims for the options; throws {@link SignError} or a `PathError`/`IpRangeError`. */
  claims(o: SignOptions): Claims {
    checkCanonical(o.path, "path");
    const now = o.now ?? Math.floor(Date.now() / 1000);
    const exp = o.expiresAt ?? (o.expiresIn !== undefined ? now + Math.floor(o.expiresIn) : undefined);
    if (exp === undefined || !Number.isSafeInteger(exp) || exp < 0 || exp > 99_999_999_999) {
      throw new SignError("give expiresIn (seconds) or expiresAt (Unix seconds, at most 11 digits)");
    }
    if (o.notBefore !== undefined && (!Number.isSafeInteger(o.notBefore) || o.notBefore < 0 || o.notBefore > exp)) {
      throw new SignError("notBefore must be a Unix time no later than the expiry");
    }
    let scope: Claims["scope"] = { kind: "path", path: o.path };
    if (o.prefix !== undefined) {
      const prefix = o.prefix === true ? o.path.slice(0, o.path.lastIndexOf("/") + 1) : o.prefix;
      checkCanonical(prefix, "prefix");
      if (!o.path.startsWith(prefix)) throw new SignError("the path is not under the prefix");
      scope = { kind: "prefix", path: prefix };
    }
    const claims: Claims = { kid: this.key.kid, exp, scope };
    if (o.notBefore !== undefined) claims.nbf = o.notBefore;
    if (o.ip !== undefined) claims.ip = canonicalIpRange(o.ip);
    return claims;
  }

  /** The compact token, for a `Bearer` header, the `vd_token` cookie or a `?token=` parameter. */
  async signToken(o: SignOptions): Promise<string> {
    return (await signWith(this.cryptoKey, this.claims(o))).token;
  }

  /** A complete signed URL, byte for byte what every conforming signer produces. */
  async signUrl(o: SignOptions): Promise<string> {
    const claims = this.claims(o);
    const signed = await signWith(this.cryptoKey, claims);
    const base = (o.baseUrl ?? "").replace(/\/+$/, "");
    if (o.carrier === "path") {
      if (claims.scope.kind !== "prefix") throw new SignError("the path carrier needs a prefix token: give prefix");
      const route = (o.routePrefix ?? "/videos").replace(/\/+$/, "");
      if (!o.path.startsWith(route + "/")) throw new SignError(`the path is not under the route prefix ${route}`);
      return `${base}${encodePath(route)}/t/${signed.token}${encodePath(o.path.slice(route.length))}`;
    }
    const params = new URLSearchParams();
    if (o.carrier === "token") {
      params.append("token", signed.token);
    } else {
      params.append("expires", String(claims.exp));
      if (claims.nbf !== undefined) params.append("nbf", String(claims.nbf));
      if (claims.scope.kind === "prefix") params.append("prefix", claims.scope.path);
      if (claims.ip !== undefined) params.append("ip", claims.ip);
      params.append("kid", claims.kid);
      params.append("signature", signed.signature);
    }
    return `${base}${encodePath(o.path)}?${params.toString()}`;
  }
}

export { PathError };
