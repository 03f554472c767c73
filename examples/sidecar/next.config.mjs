// Next.js: send /videos/* to the streaming agent injected beside the app (same pod, so 127.0.0.1). The browser
// sees one origin: no CORS, a first-party session cookie, one certificate. Range requests and the agent's
// status codes (206, 403, 416) pass through unchanged.
const upstream = process.env.VIDEO_UPSTREAM ?? "http://127.0.0.1:8080";

/** @type {import('next').NextConfig} */
export default {
  async rewrites() {
    return [{ source: "/videos/:path*", destination: `${upstream}/videos/:path*` }];
  },
};
