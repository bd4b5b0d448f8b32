#!/usr/bin/env bash
# Schemathesis against a live node: start one node (embedded store, demo apps),
# test its HTTP API against the document it serves (GET /v1/openapi.json, from
# docs/openapi.yaml) with the demo API key, stop the node. Exit 0 when every
# check passed; nonzero on a failure, or when the node did not start or logged
# a traceback.
#
# Usage: tools/schemathesis.sh
# Environment:
#   SCHEMATHESIS_EXAMPLES  examples per operation (default 300: about 20 s on 2 cores)
#   SCHEMATHESIS_SEED      replay a run (each run prints its seed)
#   SCHEMATHESIS_PORT      the node's HTTP port (default: a free one)
#   SCHEMATHESIS_ARGS      more options for `schemathesis run`, e.g. "--report junit"
#   VENV                   the virtualenv with twistd and schemathesis (default: .venv)
#
# A schema cannot say which appcodes are configured: schema-valid data the node
# refuses (400) is not a failure; the checks are those of the node's contract.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=${VENV:-$root/.venv}
examples=${SCHEMATHESIS_EXAMPLES:-300}
work=$(mktemp -d)
node_pid=

stop_node() {
  if [ -n "$node_pid" ] && kill -0 "$node_pid" 2>/dev/null; then
    kill -TERM "$node_pid" 2>/dev/null
    for _ in $(seq 1 50); do kill -0 "$node_pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$node_pid" 2>/dev/null || true
    wait "$node_pid" 2>/dev/null || true
  fi
  node_pid=
}
# shellcheck disable=SC2317 # called by the trap
cleanup() { stop_node; rm -rf "$work"; }
trap cleanup EXIT

port=${SCHEMATHESIS_PORT:-$("$venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
mkdir -p "$work/data"
# Started in the scratch directory: twistd's log and the embedded store stay out of the tree.
(cd "$work" && exec "$venv/bin/twistd" -n --pidfile= --logfile="$work/node.log" msgplatform \
  --http "tcp:$port:interface=127.0.0.1" --gate tcp:0:interface=127.0.0.1 --ws tcp:0:interface=127.0.0.1 \
  --data-dir "$work/data") &
node_pid=$!

up=0
for _ in $(seq 1 120); do
  if ! kill -0 "$node_pid" 2>/dev/null; then break; fi
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then up=1; break; fi
  sleep 0.25
done
if [ "$up" -ne 1 ]; then
  echo "schemathesis: the node did not come up on 127.0.0.1:$port"
  tail -n 40 "$work/node.log" 2>/dev/null
  exit 1
fi
echo "schemathesis: node up on 127.0.0.1:$port (pid $node_pid)"

seed=()
[ -n "${SCHEMATHESIS_SEED:-}" ] && seed=(--seed "$SCHEMATHESIS_SEED")
read -r -a extra <<< "${SCHEMATHESIS_ARGS:-}"  # more options, split on white space
(cd "$work" && "$venv/bin/schemathesis" run "http://127.0.0.1:$port/v1/openapi.json" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
  --header "Authorization: Bearer demo-key-1001" \
  --phases examples,coverage,fuzzing \
  --max-examples "$examples" \
  --workers 1 \
  --suppress-health-check too_slow \
  --request-timeout 10 \
  --generation-database none \
  --no-color \
  "${seed[@]}" "${extra[@]}")
rc=$?

stop_node
if grep -q "Traceback" "$work/node.log"; then
  echo "schemathesis: the node logged a traceback:"
  grep -n -B2 -A20 "Traceback" "$work/node.log" | head -n 80
  [ "$rc" -eq 0 ] && rc=1
fi
if [ "$rc" -ne 0 ]; then
  echo "schemathesis: FAILED (exit $rc); the node's log ends with:"
  tail -n 20 "$work/node.log"
fi
exit "$rc"
