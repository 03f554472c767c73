// Canonical paths (spec §3.1) and their URL encoding (§3.2).

/** Longest canonical path in bytes: the S3 key limit. */
export const MAX_PATH_LEN = 1024;

/** Whether a path names one object or a folder that a prefix token opens. */
export type PathKind = "path" | "prefix";

/** A path that breaks a rule of the spec; the message says which. */
export class PathError extends Error {
  override name = "PathError";
}

const utf8 = new TextEncoder();

/** Checks that an already decoded path is canonical; this is what signers are given. */
export function checkCanonical(path: string, kind: PathKind): void {
  if (!path.startsWith("/")) throw new PathError("the path must start with '/'");
  if (utf8.encode(path).length > MAX_PATH_LEN) throw new PathError(`the path is longer than ${MAX_PATH_LEN} bytes`);
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u001f\u007f\\]/.test(path)) throw new PathError("the path contains a control character or a backslash");
  let body = path.slice(1);
  if (kind === "prefix") {
    if (body === "") return;
    if (!body.endsWith("/")) throw new PathError("a prefix must end with '/'");
    body = body.slice(0, -1);
  }
  for (const segment of body.split("/")) {
    if (segment === "") throw new PathError("the path has an empty segment ('//')");
    if (segment === "." || segment === "..") throw new PathError("the path has a '.' or '..' segment");
  }
}

/** Canonical form of a raw, percent-encoded URL path: decoded once, then checked. */
export function canonicalPath(raw: string, kind: PathKind = "path"): string {
  if (!raw.startsWith("/")) throw new PathError("the path must start with '/'");
  const input = utf8.encode(raw);
  const bytes = new Uint8Array(input.length);
  let n = 0;
  for (let i = 0; i < input.length; i++) {
    if (input[i] === 0x25) {
      const hex = String.fromCharCode(input[i + 1] ?? 0, input[i + 2] ?? 0);
      if (!/^[0-9A-Fa-f]{2}$/.test(hex)) throw new PathError("the path has a '%' that is not followed by two hex digits");
      bytes[n++] = parseInt(hex, 16);
      i += 2;
    } else {
      bytes[n++] = input[i]!;
    }
  }
  let decoded: string;
  try {
    decoded = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(bytes.subarray(0, n));
  } catch {
    throw new PathError("the path does not decode to valid UTF-8");
  }
  checkCanonical(decoded, kind);
  return decoded;
}

const KEEP = /[A-Za-z0-9\-._~/]/;

/** Percent-encodes a canonical path for a URL, byte for byte as every conforming signer does. */
export function encodePath(canonical: string): string {
  let out = "";
  for (const byte of utf8.encode(canonical)) {
    const c = String.fromCharCode(byte);
    out += byte < 0x80 && KEEP.test(c) ? c : "%" + byte.toString(16).toUpperCase().padStart(2, "0");
  }
  return out;
}
