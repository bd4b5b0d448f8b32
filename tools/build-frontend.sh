#!/usr/bin/env bash
# Build the browser pages (frontend/) into the Python package (daojia_msg/webui/)
# and check that what is committed is what the source builds.
# Steps: npm ci (the exact versions of frontend/package-lock.json), regenerate
# the protobuf TypeScript (frontend/shared/gen/), typecheck, unit tests (vitest),
# build every page. Then the shipped build and the generated code must equal the
# committed ones: a change means someone edited the source and did not rebuild.
# Usage: tools/build-frontend.sh   (Node.js >= 20.19 and npm on PATH)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root/frontend"
npm ci --no-audit --no-fund
npm run gen
npm run typecheck
npm test
npm run build
cd "$root"
changed=$(git status --porcelain -- daojia_msg/webui/console daojia_msg/webui/ops frontend/shared/gen)
if [ -n "$changed" ]; then
  printf '%s\n' "$changed" >&2
  echo "build-frontend: the shipped build differs from the source: run tools/build-frontend.sh and commit" >&2
  exit 1
fi
echo "build-frontend: the shipped build matches the source"
