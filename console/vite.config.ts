// Builds the console into dist/ (index.html + assets/), which the worker serves at `/`.
// `npm run dev` / `npm run preview` proxy the API to a worker (SLUICE_API, default
// http://127.0.0.1:7171), so the console is same-origin with it as when the worker serves it.
import { defineConfig } from "vite";

const api = process.env.SLUICE_API ?? "http://127.0.0.1:7171";
const apiPaths = ["/health", "/pipelines", "/topics", "/groups", "/sql", "/query", "/metrics", "/openapi.yaml"];
const proxy = Object.fromEntries(apiPaths.map((p) => [p, { target: api, changeOrigin: false }]));

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
