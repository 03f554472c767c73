// Drives Debian's Chromium through the test page for each scenario and prints one JSON report on stdout.
// Usage: node play.mjs '{"port": 8123, "scenarios": [{"name": "...", "kind": "mp4|hls|dash", "url": "...", ...}]}'
// Optional keys: "ca" (a PEM CA certificate Chromium trusts, through an NSS database as on a real machine),
// "hosts" ({"name": "ip"}: what DNS would answer), "page" ({"host", "cert", "key"}: PEM files, to serve the page over
// HTTPS at https://host:port). The page is served here, on its own origin, so requests to the agent are cross-origin
// as in production; with "pageUrl" (the URL of a player.html served elsewhere, e.g. by an app with the agent
// on its own origin) that page is used instead.
import { execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import http from "node:http";
import https from "node:https";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const config = JSON.parse(process.argv[2]);
const files = {
  "/player.html": [new URL("./player.html", import.meta.url), "text/html; charset=utf-8"],
  "/hls.min.js": [new URL("./node_modules/hls.js/dist/hls.min.js", import.meta.url), "text/javascript"],
  "/dash.all.min.js": [new URL("./node_modules/dashjs/dist/modern/umd/dash.all.min.js", import.meta.url), "text/javascript"],
};
const handler = (req, res) => {
  const f = files[new URL(req.url, "http://x").pathname];
  if (!f) return res.writeHead(req.url === "/favicon.ico" ? 204 : 404).end();
  res.writeHead(200, { "content-type": f[1] }).end(readFileSync(f[0]));
};
const page_ = config.page;
const server = page_
  ? https.createServer({ cert: readFileSync(page_.cert), key: readFileSync(page_.key) }, handler)
  : http.createServer(handler);
await new Promise((resolve) => server.listen(config.port, "127.0.0.1", resolve));
const pageUrl = page_ ? `https://${page_.host}:${config.port}/player.html` : `http://127.0.0.1:${config.port}/player.html`;

// Chromium on Linux trusts what the user's NSS database ($HOME/.pki/nssdb) trusts, besides its root store: the CA
// goes there, in a HOME of our own, so certificates are checked for real (no --ignore-certificate-errors).
const home = mkdtempSync(join(tmpdir(), "vd-chromium-home-"));
const env = { ...process.env, HOME: home };
if (config.ca) {
  const db = `sql:${join(home, ".pki", "nssdb")}`;
  mkdirSync(join(home, ".pki", "nssdb"), { recursive: true });
  const certutil = (args) => execFileSync("certutil", ["-d", db, ...args], { stdio: ["ignore", "ignore", "pipe"] });
  certutil(["-N", "--empty-password"]);
  certutil(["-A", "-t", "C,,", "-n", "VideoDelivery test CA", "-i", config.ca]);
}
const args = ["--no-sandbox", "--disable-dev-shm-usage", "--autoplay-policy=no-user-gesture-required", "--mute-audio"];
const hosts = Object.entries(config.hosts ?? {});
if (hosts.length) args.push(`--host-resolver-rules=${hosts.map(([n, ip]) => `MAP ${n} ${ip}`).join(", ")}`);

// No sandbox (CI runs as root); /tmp instead of a container's small /dev/shm.
const browser = await chromium.launch({ executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium", args, env });
const results = [];
try {
  // A scenario whose page saw ERR_NETWORK_CHANGED (Chromium aborts its requests when an interface of the host
  // changes, as a node's do while pods start) is played once more, as a viewer would reload; `networkChanged`
  // in its result counts those replays.
  for (let i = 0, networkChanged = 0; i < config.scenarios.length; i++) {
    const s = config.scenarios[i];
    // A fresh context per scenario: no cookie or cache carries over.
    const context = await browser.newContext();
    const page = await context.newPage();
    const console_ = [];
    page.on("console", (m) => { if (m.type() === "error") console_.push(m.text()); });
    // The protocol of every response as the network stack saw it, media element loads included.
    const network = [];
    const cdp = await context.newCDPSession(page);
    cdp.on("Network.responseReceived", ({ response: r }) => {
      if (!r.url.startsWith("data:")) network.push({ url: r.url.split("?")[0], status: r.status, protocol: r.protocol });
    });
    // Why Chromium refused to store or send a cookie, in its own words (e.g. ThirdPartyPhaseout).
    const cookies = [];
    cdp.on("Network.responseReceivedExtraInfo", ({ blockedCookies }) => {
      for (const b of blockedCookies ?? []) cookies.push(`not stored: ${b.blockedReasons.join(",")}`);
    });
    cdp.on("Network.requestWillBeSentExtraInfo", ({ associatedCookies }) => {
      for (const c of associatedCookies ?? []) {
        cookies.push(c.blockedReasons.length ? `not sent: ${c.blockedReasons.join(",")}` : "sent");
      }
    });
    await cdp.send("Network.enable");
    await page.goto(config.pageUrl ?? pageUrl);
    const report = await page.evaluate((sc) => window.play(sc), { timeoutMs: 15000, ...s });
    // The cookies the browser kept, without their values (a session cookie is a credential).
    const kept = (await context.cookies()).map(({ name, sameSite, secure, httpOnly, path }) => ({ name, sameSite, secure, httpOnly, path }));
    await context.close();
    if (networkChanged === 0 && console_.some((line) => line.includes("ERR_NETWORK_CHANGED"))) {
      networkChanged = 1;
      i--;
      continue;
    }
    results.push({ name: s.name, ...report, network: network.slice(0, 200), cookies: [...new Set(cookies)], kept, console: console_.slice(0, 5), networkChanged });
    networkChanged = 0;
  }
} finally {
  await browser.close();
  server.close();
  rmSync(home, { recursive: true, force: true });
}
process.stdout.write(JSON.stringify(results) + "\n");
