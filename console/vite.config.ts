// Builds the console into dist/ (index.html + assets/), which the worker serves at `/`.
// `npm run dev` / `npm run preview` proxy the API to a worker (SLUICE_API, default
// http://127.0.0.1:7070), so the console is same-origin with it as when the worker serves it.
import { defineConfig, type ProxyOptions } from "vite";

type ProxyServer = Parameters<NonNullable<ProxyOptions["configure"]>>[0];

const api = process.env.SLUICE_API ?? "http://127.0.0.1:7070";
const apiPaths = ["/health", "/pipelines", "/topics", "/groups", "/sql", "/query", "/queries", "/metrics", "/openapi.yaml", "/openapi.json"];
const proxy = Object.fromEntries(
  apiPaths.map((p) => [
    p,
    {
      target: api,
      changeOrigin: false,
      configure: (server: ProxyServer) =>
        // Node sends a response's headers with its first body bytes, so an event stream still
        // waiting for its first event (Follow on a quiet topic) would look unanswered: send
        // them at once (after the proxy has copied the status and headers, in this same tick).
        server.on("proxyRes", (res, _req, out) => {
          if (String(res.headers["content-type"] ?? "").startsWith("text/event-stream")) {
            queueMicrotask(() => out.flushHeaders());
          }
        }),
    },
  ]),
);

export default defineConfig({
  base: "./",
  oxc: { jsx: { runtime: "automatic", importSource: "preact" } },
  build: {
    outDir: "dist",
    assetsDir: "assets",
    emptyOutDir: true,
    target: "es2022",
    sourcemap: false,
    // One script and one stylesheet: nothing to split in a console this size.
    modulePreload: { polyfill: false },
  },
  server: { host: "127.0.0.1", port: 5173, strictPort: true, proxy },
  preview: { host: "127.0.0.1", port: 4173, strictPort: true, proxy },
});
