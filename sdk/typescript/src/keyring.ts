// The keyring document (spec §7): written by the operator into a Secret, read by backends to sign.

import { decodeStdBase64 } from "./base64.js";

export type KeyState = "pending" | "active" | "retiring";

/** One key. `secret` is the raw key: never log it. */
export interface Key {
  readonly kid: string;
  readonly state: KeyState;
  readonly secret: Uint8Array;
  readonly createdAt: number;
  /** For a pending key: the earliest time it may become active. */
  readonly activateAfter?: number;
  readonly acceptUntil?: number;
}

/**
 * A validated keyring: at most one active key, unique ids, 32–64-byte secrets. Without an active key it is
 * *starting* (spec §7.1): it has a pending key, verifies as usual, and cannot sign until that key is promoted.
 */
export interface Keyring {
  readonly keys: readonly Key[];
  /** The key a signer must use; `undefined` while the keyring is starting. */
  readonly active: Key | undefined;
}

/** A keyring document that breaks a rule of the spec. Messages name keys by id, never by secret. */
export class KeyringError extends Error {
  override name = "KeyringError";
}

const KID = /^[A-Za-z0-9_-]{1,64}$/;
const STATES: readonly string[] = ["pending", "active", "retiring"];

function isTime(v: unknown): v is number {
  return typeof v === "number" && Number.isSafeInteger(v) && v >= 0;
}

/** Parses and validates a keyring document (a JSON string or the parsed object). */
export function parseKeyring(doc: string | unknown): Keyring {
  let value: unknown = doc;
  if (typeof doc === "string") {
    try {
      value = JSON.parse(doc);
    } catch {
      throw new KeyringError("the keyring is not valid JSON");
    }
  }
  if (typeof value !== "object" || value === null) throw new KeyringError("the keyring must be a JSON object");
  const { version, keys } = value as { version?: unknown; keys?: unknown };
  if (version !== 1) throw new KeyringError(`keyring version ${String(version)} is not supported (expected 1)`);
  if (!Array.isArray(keys) || keys.length === 0) throw new KeyringError("the keyring has no keys");
  const parsed: Key[] = [];
  for (const raw of keys as unknown[]) {
    const k = (raw ?? {}) as Record<string, unknown>;
    if (typeof k.kid !== "string" || !KID.test(k.kid)) {
      throw new KeyringError(`key id ${JSON.stringify(k.kid)} is not 1-64 characters of A-Z a-z 0-9 _ -`);
    }
    const kid = k.kid;
    if (parsed.some((p) => p.kid === kid)) throw new KeyringError(`key id "${kid}" appears more than once`);
    if (typeof k.state !== "string" || !STATES.includes(k.state)) {
      throw new KeyringError(`key "${kid}" has an unknown state`);
    }
    const secret = typeof k.secret === "string" ? decodeStdBase64(k.secret) : undefined;
    if (!secret) throw new KeyringError(`key "${kid}" has a secret that is not valid base64`);
    if (secret.length < 32 || secret.length > 64) {
      throw new KeyringError(`key "${kid}" is ${secret.length} bytes long; keys must be 32 to 64 bytes`);
    }
    if (!isTime(k.created_at)) throw new KeyringError(`key "${kid}" has no valid created_at`);
    for (const f of ["activate_after", "activated_at", "retired_at", "accept_until"]) {
      if (k[f] !== undefined && !isTime(k[f])) throw new KeyringError(`key "${kid}" has an invalid ${f}`);
    }
    if (k.state === "retiring" && k.accept_until === undefined) {
      throw new KeyringError(`key "${kid}" is retiring but has no accept_until`);
    }
    parsed.push({
      kid,
      state: k.state as KeyState,
      secret,
      createdAt: k.created_at,
      ...(isTime(k.activate_after) ? { activateAfter: k.activate_after } : {}),
      ...(isTime(k.accept_until) ? { acceptUntil: k.accept_until } : {}),
    });
  }
  const active = parsed.filter((k) => k.state === "active");
  if (active.length > 1) throw new KeyringError(`the keyring has ${active.length} active keys; it must have at most one`);
  if (active.length === 0 && !parsed.some((k) => k.state === "pending")) {
    throw new KeyringError("the keyring has no active and no pending key; nobody could ever sign with it");
  }
  return { keys: parsed, active: active[0] };
}

/** The pending key that becomes active first (one without `activate_after` counts as due since its creation). */
export function nextPending(keyring: Keyring): Key | undefined {
  const due = (k: Key) => k.activateAfter ?? k.createdAt;
  return keyring.keys.filter((k) => k.state === "pending").reduce<Key | undefined>((a, k) => (a && due(a) <= due(k) ? a : k), undefined);
}
