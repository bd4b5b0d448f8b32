#!/usr/bin/env bash
# Every benchmark of BENCHMARKS.md, one after the other, on this machine.
#
#   tools/bench-suite.sh [SETUP...]      SETUP: one, real, two (default: all three)
#
#   one   one node on the embedded default (SQLite, in-memory sessions,
#         in-process bus)
#   real  one node on Redis (sessions), MySQL (messages), Redis Streams (C2S)
#   two   two nodes behind HAProxy on Redis, MySQL and Redis Streams
#         (tools/cluster-up.sh up 2)
#
# SCENARIOS="c2c login" limits the scenarios (default: all); DURATION=10 sets
# the seconds per timed run. connect-ws and c2c-ws are the gate over WebSocket
# (one and real only): connect-ws holds the connect run's connections over
# WebSocket on a fresh node; c2c-ws runs the closed-loop c2c over TCP and over
# WebSocket on one node, interleaved (tcp, ws, tcp, ws: the machine's speed
# drifts). GATE_PORT and HTTP_PORT (default 7000, 8080) move one and real's
# node. Results: var/bench/<setup>/<scenario>.json, and a summary table at
# the end (python -m daojia_msg.bench.summary var/bench).
# It starts and stops its own nodes; Redis, MariaDB and Mosquitto must run
# (.ci/run starts them). Run it on a quiet machine: the figures are only as
# good as the idle cores.
#
# WARNING: real and two start every scenario on fresh data: they EMPTY Redis
# databases 12, 14 (real) and 0, 14 (two), and DROP and re-create the MySQL
# databases msgbench (real) and msgplatform (two, tools/cluster-up.sh's
# default). Only on a machine whose servers hold nothing else; it refuses to
# start those setups unless BENCH_RESET=yes.
set -euo pipefail
cd "$(dirname "$0")/.."
out=var/bench
bench=.venv/bin/msgplatform-bench
twistd=.venv/bin/twistd
duration=${DURATION:-10}
scenarios=${SCENARIOS:-"connect login c2s gps c2c c2c-open push pull versus connect-ws c2c-ws"}
gate_port=${GATE_PORT:-7000}
http_port=${HTTP_PORT:-8080}
setups=("$@")
[ ${#setups[@]} -gt 0 ] || setups=(one real two)
for setup in "${setups[@]}"; do
  if [ "$setup" != one ] && [ "${BENCH_RESET:-}" != yes ]; then
    echo "bench-suite: '$setup' empties Redis databases 0/12/14 and drops the MySQL databases" \
      "msgbench and msgplatform before each run; BENCH_RESET=yes $0 $* to agree" >&2
    exit 2
  fi
done
node_pids=""
gate="" http=""  # where the bench connects: the node's gate and API, or HAProxy's
ws=""            # the node's WebSocket listener, on a free port

wait_port() {
  for _ in $(seq 1 60); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.5
  done
  echo "nothing listens on 127.0.0.1:$1" >&2; return 1
}

reset_backends() {  # a fresh message database and fresh Redis keys
  mysql -uroot -h127.0.0.1 -e "DROP DATABASE IF EXISTS $1; CREATE DATABASE $1 CHARACTER SET utf8mb4"
  redis-cli -n "$2" flushdb >/dev/null
  redis-cli -n 14 flushdb >/dev/null  # the C2S streams
}

start_node() {  # name, extra options...
  local name=$1; shift
  rm -rf "$out/$name-var"; mkdir -p "$out/$name-var"
  # A free port for the WebSocket listener (the default 7070 could be taken).
  ws=127.0.0.1:$(.venv/bin/python -c 'import socket; s = socket.socket(); \
s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  $twistd --pidfile="$out/$name.pid" --logfile="$out/$name.log" msgplatform \
    --data-dir "$out/$name-var" --gate "tcp:$gate_port:interface=127.0.0.1:backlog=1024" \
    --http "tcp:$http_port:interface=127.0.0.1" \
    --ws "tcp:${ws#*:}:interface=127.0.0.1:backlog=1024" "$@"
  wait_port "$gate_port"; wait_port "$http_port"
  node_pids=$(cat "$out/$name.pid")
  gate=127.0.0.1:$gate_port http=http://127.0.0.1:$http_port
}

stop_nodes() {
  for pidfile in "$out"/*.pid; do
    [ -e "$pidfile" ] || continue
    pid=$(cat "$pidfile"); kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    rm -f "$pidfile"
  done
}

run() {  # setup, label, scenario and its options
  local setup=$1 label=$2; shift 2
  echo "== $setup $label: msgplatform-bench $*"
  $bench "$@" --gate "$gate" --http "$http" ${ws:+--ws "$ws"} \
    --node-pid "$node_pids" --no-progress --json "$out/$setup/$label.json" \
    | tail -n 4 || echo "   ($label failed: see above)"
  sleep 2  # let the node settle (closing connections, flushing) before the next run
}

scenario() {  # setup, scenario name
  local s=$1 connections=15000 procs=3
  # One HAProxy process: maxconn 9000 (20,000 files). login holds every
  # connection it logged in until the end too: past 9,000, HAProxy queued the
  # rest and they timed out (72 logins/s, the nodes idle).
  [ "$s" = two ] && connections=8000
  case $2 in
    connect) run "$s" connect connect -n "$connections" --hold 10 --procs "$procs" ;;
    login) run "$s" login login -n "$connections" --procs 2 --concurrency 256 ;;
    c2s) run "$s" c2s c2s --conns 200 --rate 0 --duration "$duration" --procs 2 ;;
    gps) run "$s" gps c2s --gps --conns 200 --rate 0 --duration "$duration" --procs 2 ;;
    c2c) run "$s" c2c c2c --pairs 200 --rate 0 --duration "$duration" --procs 2 --size 64 ;;
    c2c-open)
      run "$s" c2c-open-1000 c2c --pairs 200 --rate 1000 --duration "$duration" --procs 2 --size 64
      run "$s" c2c-open-5000 c2c --pairs 200 --rate 5000 --duration "$duration" --procs 2 --size 64 ;;
    push)
      run "$s" push-single push --batch 1 --rate 0 --duration "$duration" --concurrency 32 --procs 2
      run "$s" push-batch push --batch 1000 --rate 0 --duration "$duration" --concurrency 4 --procs 2 ;;
    pull) run "$s" pull pull -n 10000 ;;
    versus)
      [ "$s" = one ] || return 0  # the side by side runs against the embedded node
      run "$s" versus-closed versus --pairs 200 --size 64 --rate 0 --duration "$duration" \
        --procs 2 --broker-pid "$(pgrep -o mosquitto)"
      run "$s" versus-open versus --pairs 200 --size 64 --rate 1000 --duration "$duration" \
        --procs 2 --broker-pid "$(pgrep -o mosquitto)" ;;
    connect-ws)
      [ "$s" != two ] || return 0  # HAProxy fronts the nodes' TCP gates only
      run "$s" connect-ws connect --transport ws -n "$connections" --hold 10 --procs "$procs" ;;
    c2c-ws)
      [ "$s" != two ] || return 0
      for round in 1 2; do
        for t in tcp ws; do
          run "$s" "c2c-ws-$round-$t" c2c --transport $t --pairs 200 --rate 0 \
            --duration "$duration" --procs 2 --size 64
        done
      done ;;
    *) echo "unknown scenario $2" >&2; return 1 ;;
  esac
}

trap 'stop_nodes; tools/cluster-up.sh down >/dev/null 2>&1 || true' EXIT
for setup in "${setups[@]}"; do
  mkdir -p "$out/$setup"
  for s in $scenarios; do
    # A fresh node (and fresh data) per scenario, so no run inherits another's backlog.
    case $setup in
      one) start_node one ;;
      real)
        reset_backends msgbench 12
        start_node real --redis redis://127.0.0.1:6379/12 \
          --mysql mysql://root@127.0.0.1:3306/msgbench --bus redis://127.0.0.1:6379/14 \
          --rpc tcp:7199:interface=127.0.0.1 ;;
      two)
        reset_backends msgplatform 0
        NODE_ARGS="--bus redis://127.0.0.1:6379/14" tools/cluster-up.sh up 2 >/dev/null
        node_pids="$(cat var/cluster/node1.pid),$(cat var/cluster/node2.pid)"
        gate=127.0.0.1:7000 http=http://127.0.0.1:8080 ws=""
        sleep 3 ;;  # HAProxy's first health checks
      *) echo "unknown setup $setup" >&2; exit 2 ;;
    esac
    scenario "$setup" "$s" || true
    if [ "$setup" = two ]; then tools/cluster-up.sh down >/dev/null; else stop_nodes; fi
  done
done
.venv/bin/python -m daojia_msg.bench.summary "$out"
