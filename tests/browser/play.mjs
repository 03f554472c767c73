// Drives Debian's Chromium through the test page for each scenario and prints one JSON report on stdout.
// Usage: node play.mjs '{"port": 8123, "scenarios": [{"name": "...", "kind": "mp4|hls|dash", "url": "...", ...}]}'
// The page is served here, on its own origin, so requests to the agent are cross-origin as in production; with
// "page" (a URL of a player.html served elsewhere, e.g. by an app with the agent on its own origin) that page is used.
import { readFileSync } from "node:fs";
import http from "node:http";
import { chromium } from "playwright-core";

const config = JSON.parse(process.argv[2]);
const files = {
  "/player.html": [new URL("./player.html", import.meta.url), "text/html; charset=utf-8"],
  "/hls.min.js": [new URL("./node_modules/hls.js/dist/hls.min.js", import.meta.url), "text/javascript"],
  "/dash.all.min.js": [new URL("./node_modules/dashjs/dist/modern/umd/dash.all.min.js", import.meta.url), "text/javascript"],
};
const server = http.createServer((req, res) => {
  const f = files[new URL(req.url, "http://x").pathname];
  if (!f) return res.writeHead(req.url === "/favicon.ico" ? 204 : 404).end();
  res.writeHead(200, { "content-type": f[1] }).end(readFileSync(f[0]));
});
await new Promise((resolve) => server.listen(config.port, "127.0.0.1", resolve));

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  // No sandbox (CI runs as root); /tmp instead of a container's small /dev/shm.
  args: ["--no-sandbox", "--disable-dev-shm-usage", "--autoplay-policy=no-user-gesture-required", "--mute-audio"],
});
const results = [];
try {
  for (const s of config.scenarios) {
    // A fresh context per scenario: no cookie or cache carries over.
    const context = await browser.newContext();
    const page = await context.newPage();
    const console_ = [];
    page.on("console", (m) => { if (m.type() === "error") console_.push(m.text()); });
    await page.goto(config.page ?? `http://127.0.0.1:${config.port}/player.html`);
    const report = await page.evaluate((sc) => window.play(sc), { timeoutMs: 15000, ...s });
    // The cookies the browser kept, without their values (a session cookie is a credential).
    const cookies = (await context.cookies()).map(({ name, sameSite, secure, httpOnly, path }) => ({ name, sameSite, secure, httpOnly, path }));
    results.push({ name: s.name, ...report, cookies, console: console_.slice(0, 5) });
    await context.close();
  }
} finally {
  await browser.close();
  server.close();
}
process.stdout.write(JSON.stringify(results) + "\n");
