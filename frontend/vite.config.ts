// One page per mode, each built into the Python package that serves it:
//   vite build --mode console  -> daojia_msg/webui/console/ (served at /console/)
//   vite build --mode ops      -> daojia_msg/webui/ops/     (served at /ops/)
// Both pages may import from frontend/shared. Builds are deterministic (the same
// source gives the same bytes): CI rebuilds and diffs against the committed output.
// Without a page mode (vitest) the root is frontend/ and only the test settings apply.
import { fileURLToPath } from "node:url";
import { resolve } from "node:path";
import { defineConfig } from "vitest/config";

const here = fileURLToPath(new URL(".", import.meta.url));
const PAGES = ["console", "ops"] as const;
type Page = (typeof PAGES)[number];

function isPage(mode: string): mode is Page {
  return (PAGES as readonly string[]).includes(mode);
}

// Pages and tests import the shared code as "@shared/..." (tsconfig.json paths).
const alias = { "@shared": resolve(here, "shared") };

export default defineConfig(({ mode }) => {
  if (!isPage(mode)) {
    return {
      root: here,
      resolve: { alias },
      test: {
        include: ["tests/**/*.test.ts", "ops/tests/**/*.test.ts"],
        environment: "happy-dom",
      },
    };
  }
  return {
    root: resolve(here, mode),
    base: `/${mode}/`,
    resolve: { alias },
    publicDir: false,
    server: {
      fs: { allow: [here] },
      // `npm run dev:console` proxies the node's WebSocket and HTTP to the dev page.
      proxy: {
        "/v1/ws": { target: "ws://127.0.0.1:7070", ws: true },
        "/console/demo-token": { target: "http://127.0.0.1:7070" },
      },
    },
    build: {
      outDir: resolve(here, "..", "daojia_msg", "webui", mode),
      emptyOutDir: true,
      target: "es2022",
      sourcemap: false,
      reportCompressedSize: false,
      modulePreload: { polyfill: false },
    },
  };
});
