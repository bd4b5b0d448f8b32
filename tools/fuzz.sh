#!/usr/bin/env bash
# Fuzz the gate with atheris for a fixed budget: the codec and one connection's
# state machine, fed any bytes (tests/fuzz/gate_target.py; tests/fuzz/harness.py
# says what must always hold). Usage:
#
#   tools/fuzz.sh [RUNS] [extra libFuzzer flags...]     # RUNS default 100000
#
# Installs atheris (tools/requirements-fuzz.txt) into .venv when missing, keeps
# its corpus in var/fuzz/corpus (seeded on the first run, grown by each run),
# writes a crashing input to var/fuzz/crash-* and exits nonzero on a finding;
# replay one with `.venv/bin/python -m tests.fuzz.gate_target --replay FILE`.
# On a shared machine run it niced: `nice -n 19 tools/fuzz.sh 1000000`.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-100000}
shift || true
py=.venv/bin/python
if ! "$py" -c 'import atheris' 2>/dev/null; then
  .venv/bin/pip install -q -r tools/requirements-fuzz.txt
fi
out=var/fuzz
mkdir -p "$out/corpus"
"$py" -m tests.fuzz.gate_target --write-seeds "$out/corpus"
start=$(date +%s)
status=0
"$py" -m tests.fuzz.gate_target -atheris_runs="$runs" -max_len=2048 \
  -artifact_prefix="$out/" -print_final_stats=1 "$@" "$out/corpus" 2>&1 \
  | grep -v '^INFO: Instrumenting ' || status=$?
elapsed=$(( $(date +%s) - start ))
echo "fuzz.sh: $runs runs in ${elapsed} s, exit status $status, corpus $(find "$out/corpus" -type f | wc -l) inputs"
exit "$status"
