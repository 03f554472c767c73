/**
 * Mint VideoDelivery signed URLs (docs/token-format.md, v1) from any JavaScript runtime with Web Crypto.
 *
 * ```ts
 * const signer = await Signer.create(parseKeyring(keyringJson));
 * const url = await signer.signUrl({ baseUrl: "https://media.example.com", path: "/videos/a.mp4", expiresIn: 3600 });
 * ```
 */
export { Signer, SignError, NotYetActiveError, sign, claimsText } from "./sign.js";
export type { Claims, Signed, SignOptions, Via } from "./sign.js";
export { parseKeyring, nextPending, KeyringError } from "./keyring.js";
export type { Key, Keyring, KeyState } from "./keyring.js";
export { canonicalPath, checkCanonical, encodePath, PathError, MAX_PATH_LEN } from "./path.js";
export type { PathKind } from "./path.js";
export { canonicalIpRange, IpRangeError } from "./ip.js";
