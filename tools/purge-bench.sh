#!/bin/bash
# C2C latency while the purge deletes a million old rows, against no purge
# (BENCHMARKS.md, "Purging a million rows (issue 16)").
#
#   tools/purge-bench.sh [ROUNDS] [DURATION_S] [OUT]        (defaults 3, 40, var/purge-bench)
#
# Once: tools/old-rows load makes the database purge_tpl (250,000 old C2C
# messages: 1,000,000 rows). Then ROUNDS x (A, B), interleaved, each run on a
# fresh copy of it (purge_run) and a fresh node (MySQL store, in-memory
# sessions and bus, gate 127.0.0.1:37000, HTTP 127.0.0.1:38080):
#   A (purge):    store.purge_interval_s = 2: the first round starts 2 s after
#                 the node opens its store and deletes every old row;
#   B (no purge): store.purge_interval_s = 86400: no round during the run.
# PURGE_MAX_ROWS_PER_S sets store.purge_max_rows_per_s and PURGE_BATCH
# store.purge_batch (default: the product's;
# 0 = unbounded); PURGE_WAIT_S bounds how long A's node runs on after the load
# for its first round to end (default 600 s).
# Each run: msgplatform-bench c2c --pairs 200 --rate 1000 --duration DURATION
# --procs 2 --size 64 from the node's start, then /v1/stats, /metrics, the
# node's log and the rows left. MariaDB's CPU seconds over the run are read
# from /proc. Run it from the checkout to measure (a `git archive` snapshot
# is best: nothing changes under it). Drops purge_tpl and purge_run at the end.
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
ROUNDS=${1:-3}
DUR=${2:-40}
OUT=${3:-var/purge-bench}
PY=${PY:-$ROOT/.venv/bin/python}
[ -x "$PY" ] || PY=$(command -v python3)
BENCH=$(dirname "$PY")/msgplatform-bench
MYSQL=mysql://root@127.0.0.1:3306
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
export PYTHONPATH=$ROOT

for label in A B; do
  interval=2.0; [ $label = B ] && interval=86400.0
  cat > "$OUT/$label.toml" <<EOF
[mysql]
url = "$MYSQL/purge_run"
[store]
purge_interval_s = $interval
${PURGE_MAX_ROWS_PER_S:+purge_max_rows_per_s = $PURGE_MAX_ROWS_PER_S}
${PURGE_BATCH:+purge_batch = $PURGE_BATCH}
[apps.1001]
usersystem = "demo"
secret = "demo-secret-1001"
api_key = "demo-key-1001"
EOF
done

cleanup() {
  "$PY" "$ROOT/tools/old-rows" drop --mysql $MYSQL/purge_run || true
  "$PY" "$ROOT/tools/old-rows" drop --mysql $MYSQL/purge_tpl || true
}
trap cleanup EXIT
"$PY" "$ROOT/tools/old-rows" drop --mysql $MYSQL/purge_tpl
"$PY" "$ROOT/tools/old-rows" load --mysql $MYSQL/purge_tpl > "$OUT/load.txt" 2>&1

cpu_s() {  # utime + stime of pid $1, in seconds
  awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/$1/stat"
}
DB=$(pgrep -o -x mariadbd || pgrep -o -x mysqld)

run() {  # run LABEL-ROUND
  local name=$1 label=${1%%-*}
  "$PY" "$ROOT/tools/old-rows" copy --from purge_tpl --mysql $MYSQL/purge_run > "$OUT/$name.copy"
  rm -rf "$OUT/var-$name"; mkdir -p "$OUT/var-$name"
  "$PY" -c "import sys; sys.path.insert(0, '$ROOT'); sys.argv[0] = 'twistd'
from twisted.scripts.twistd import run; run()" -n msgplatform -c "$OUT/$label.toml" \
    --data-dir "$OUT/var-$name" --gate tcp:37000:interface=127.0.0.1:backlog=1024 \
    --http tcp:38080:interface=127.0.0.1 --ws "" > "$OUT/$name.log" 2>&1 &
  local node=$! db0
  for _ in $(seq 1 150); do
    curl -sf -o /dev/null http://127.0.0.1:38080/healthz && break; sleep 0.2
  done
  db0=$(cpu_s "$DB")
  locks0=$(mysql -h127.0.0.1 -uroot -N -e "SHOW GLOBAL STATUS WHERE Variable_name IN ('Innodb_row_lock_waits', 'Innodb_row_lock_time', 'Innodb_buffer_pool_reads', 'Innodb_buffer_pool_read_requests', 'Innodb_data_fsyncs', 'Innodb_os_log_written', 'Innodb_data_written', 'Innodb_history_list_length')" | tr '\t\n' '= ')
  { echo "up_ms $(date +%s%3N)"; date -u +%FT%T.%NZ; cat /proc/loadavg; } > "$OUT/$name.meta"
  "$BENCH" c2c --pairs 200 --rate 1000 --duration "$DUR" --procs 2 --size 64 \
    --gate 127.0.0.1:37000 --node-pid $node --json "$OUT/$name.json" --no-progress \
    > "$OUT/$name.bench" 2>&1
  { date -u +%FT%T.%NZ; cat /proc/loadavg
    echo "mariadb_cpu_s $(echo "$(cpu_s "$DB") - $db0" | bc)"
    echo "innodb_before $locks0"
    echo "innodb_after $(mysql -h127.0.0.1 -uroot -N -e "SHOW GLOBAL STATUS WHERE Variable_name IN ('Innodb_row_lock_waits', 'Innodb_row_lock_time', 'Innodb_buffer_pool_reads', 'Innodb_buffer_pool_read_requests', 'Innodb_data_fsyncs', 'Innodb_os_log_written', 'Innodb_data_written', 'Innodb_history_list_length')" | tr '\t\n' '= ')"
  } >> "$OUT/$name.meta"
  echo "bench_end_ms $(date +%s%3N)" >> "$OUT/$name.meta"
  # A: the node runs on until its first purge round has ended (at most PURGE_WAIT_S).
  for _ in $(seq 1 "${PURGE_WAIT_S:-600}"); do
    curl -s -H "Authorization: Bearer demo-key-1001" http://127.0.0.1:38080/v1/stats \
      > "$OUT/$name.stats"
    [ "$label" = B ] || grep -q '"last_purge": *{' "$OUT/$name.stats" && break
    sleep 1
  done
  curl -s http://127.0.0.1:38080/metrics | grep -E "^msgplatform_store_purged_rows_total" \
    > "$OUT/$name.metrics" || true
  kill $node; wait $node || true
  "$PY" "$ROOT/tools/old-rows" count --mysql $MYSQL/purge_run >> "$OUT/$name.meta"
  echo "$name done: $(grep -E 'purged' "$OUT/$name.log" | head -1 | cut -c1-200)"
}

for r in $(seq 1 "$ROUNDS"); do
  run "A-$r"
  run "B-$r"
done
"$PY" - "$OUT" <<'EOF'
import datetime, json, pathlib, sys
out = pathlib.Path(sys.argv[1])
print("run  acked/s  result p50/p99 ms  push p50/p99 ms  node cpu %  mariadb cpu s  rows left"
      "  purge s (from start+2 s to its log line; bench ended at s)")
for f in sorted(out.glob("[AB]-*.json")):
    r = json.loads(f.read_text())
    res, node = r["results"], r["node"]
    meta = f.with_suffix(".meta").read_text().split("\n")
    db = next((l.split()[1] for l in meta if l.startswith("mariadb_cpu_s")), "-")
    rows = next((l.split()[-1] for l in meta if l.startswith("dedup=")), "-")
    ms = {l.split()[0]: int(l.split()[1]) for l in meta if l.endswith(tuple("0123456789"))
          and l.split()[0] in ("up_ms", "bench_end_ms")}
    last = (json.loads(f.with_suffix(".stats").read_text()).get("store") or {}).get("last_purge")
    line = next((l for l in f.with_suffix(".log").read_text().split("\n") if "purged" in l), "")
    if line:  # the first round's end, to the second (a later round may be "last_purge")
        end = datetime.datetime.fromisoformat(line.split()[0]).timestamp() * 1000
        purge = f"{(end - ms['up_ms'] - 2000) / 1000:.0f}"
    else:
        purge = "-"
    purge += f" ({(ms['bench_end_ms'] - ms['up_ms'] - 2000) / 1000:.1f})"
    if line:
        purge += " " + line.split("] ", 1)[1]
    print(f"{f.stem:4} {res['acked_per_s']:8.1f}  {res['result_latency']['p50_ms']:7.1f}/"
          f"{res['result_latency']['p99_ms']:<7.1f}  {res['push_latency']['p50_ms']:7.1f}/"
          f"{res['push_latency']['p99_ms']:<7.1f}  {node['cpu_pct']:9.1f}  {db:>13}  {rows}  {purge}")
EOF
