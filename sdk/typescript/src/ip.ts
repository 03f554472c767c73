// Client address ranges (spec §3.3).

/** An address or range that cannot be a claim; the message says why. */
export class IpRangeError extends Error {
  override name = "IpRangeError";
}

function parseV4(text: string): number[] | undefined {
  const parts = text.split(".");
  if (parts.length !== 4) return undefined;
  const out: number[] = [];
  for (const p of parts) {
    if (!/^(0|[1-9][0-9]{0,2})$/.test(p) || Number(p) > 255) return undefined;
    out.push(Number(p));
  }
  return out;
}

function parseV6(text: string): number[] | undefined {
  // Returns 16 bytes. Accepts one "::" and a dotted IPv4 tail.
  let tail: number[] = [];
  let body = text;
  const lastColon = text.lastIndexOf(":");
  if (text.includes(".")) {
    const v4 = parseV4(text.slice(lastColon + 1));
    if (!v4) return undefined;
    tail = v4;
    body = text.slice(0, lastColon + 1);
    if (!body.endsWith("::")) body = body.slice(0, -1);
  }
  const halves = body.split("::");
  if (halves.length > 2) return undefined;
  const group = (s: string): number[] | undefined => {
    if (s === "") return [];
    const out: number[] = [];
    for (const g of s.split(":")) {
      if (!/^[0-9A-Fa-f]{1,4}$/.test(g)) return undefined;
      out.push(parseInt(g, 16));
    }
    return out;
  };
  const head = group(halves[0]!);
  const rest = halves.length === 2 ? group(halves[1]!) : [];
  if (!head || !rest) return undefined;
  const groupsWanted = 8 - tail.length / 2;
  let groups: number[];
  if (halves.length === 2) {
    const fill = groupsWanted - head.length - rest.length;
    if (fill < 1) return undefined;
    groups = [...head, ...new Array<number>(fill).fill(0), ...rest];
  } else {
    if (head.length !== groupsWanted) return undefined;
    groups = head;
  }
  const bytes: number[] = [];
  for (const g of groups) bytes.push(g >> 8, g & 255);
  return [...bytes, ...tail];
}

function formatV6(bytes: number[]): string {
  const groups: number[] = [];
  for (let i = 0; i < 16; i += 2) groups.push((bytes[i]! << 8) | bytes[i + 1]!);
  // RFC 5952: compress the longest run of two or more zero groups, the first on a tie.
  let best = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLen) {
      best = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = groups.map((g) => g.toString(16));
  if (best < 0) return hex.join(":");
  return hex.slice(0, best).join(":") + "::" + hex.slice(best + bestLen).join(":");
}

function mask(bytes: number[], len: number): number[] {
  return bytes.map((b, i) => {
    const keep = Math.max(0, Math.min(8, len - i * 8));
    return b & ((0xff << (8 - keep)) & 0xff);
  });
}

/**
 * The canonical claim for what a person gives a signer: a bare address becomes /32 or /128, host bits are
 * cleared, IPv6 is written as RFC 5952 says. IPv4-mapped IPv6 is refused: write the IPv4 address.
 */
export function canonicalIpRange(input: string): string {
  const slash = input.indexOf("/");
  const addr = slash < 0 ? input : input.slice(0, slash);
  const lenText = slash < 0 ? undefined : input.slice(slash + 1);
  if (lenText !== undefined && !/^[0-9]{1,3}$/.test(lenText)) throw new IpRangeError("not an IP address or CIDR range");
  const v4 = parseV4(addr);
  if (v4) {
    const len = lenText === undefined ? 32 : Number(lenText);
    if (len > 32) throw new IpRangeError("the prefix length is too large for IPv4");
    return `${mask(v4, len).join(".")}/${len}`;
  }
  const v6 = addr.includes(":") ? parseV6(addr) : undefined;
  if (!v6) throw new IpRangeError("not an IP address or CIDR range");
  if (v6.slice(0, 10).every((b) => b === 0) && v6[10] === 0xff && v6[11] === 0xff) {
    throw new IpRangeError("IPv4-mapped IPv6 addresses are not allowed; write the IPv4 address");
  }
  const len = lenText === undefined ? 128 : Number(lenText);
  if (len > 128) throw new IpRangeError("the prefix length is too large for IPv6");
  return `${formatV6(mask(v6, len))}/${len}`;
}
