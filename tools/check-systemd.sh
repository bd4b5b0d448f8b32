#!/usr/bin/env bash
# Checks etc/systemd/msgplatform@.service with `systemd-analyze verify`, the
# twistd of ExecStart pointed at this checkout's venv (verify wants it to
# exist). Any warning fails the check; without systemd-analyze it says so and
# passes (CI installs systemd where it can).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v systemd-analyze >/dev/null 2>&1; then
  echo "systemd-analyze not available: unit not checked"
  exit 0
fi
twistd=$(pwd)/.venv/bin/twistd
[ -x "$twistd" ] || { echo "no $twistd: set up the venv first" >&2; exit 1; }
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
sed "s#/opt/msgplatform/bin/twistd#$twistd#" etc/systemd/msgplatform@.service > "$dir/msgplatform@.service"
out=$(cd "$dir" && systemd-analyze verify --man=no ./msgplatform@node1.service 2>&1) || { echo "$out"; exit 1; }
if [ -n "$out" ]; then echo "$out"; exit 1; fi
echo "etc/systemd/msgplatform@.service: systemd-analyze verify found nothing to say"
