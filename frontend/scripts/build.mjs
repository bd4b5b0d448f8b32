// npm run build: every page of frontend/ that exists (ops/ may not be written yet).
import { existsSync } from "node:fs";
import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("..", import.meta.url));
for (const page of ["console", "ops"]) {
  if (!existsSync(`${root}${page}/index.html`)) {
    console.log(`build: ${page}/index.html does not exist, ${page} skipped`);
    continue;
  }
  const run = spawnSync("npx", ["vite", "build", "--mode", page], { cwd: root, stdio: "inherit" });
  if (run.status !== 0) {
    process.exit(run.status ?? 1);
  }
}
