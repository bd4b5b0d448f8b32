#!/usr/bin/env bash
# A three-node cluster on one machine, for a try-out: Redis, MariaDB/MySQL,
# three `twistd msgplatform` nodes (etc/cluster.toml) and HAProxy in front
# (etc/haproxy.cfg: phones on 127.0.0.1:7000, HTTP API on 127.0.0.1:8080).
#
#   tools/cluster-up.sh          start everything (Redis/MySQL only if not running)
#   tools/cluster-up.sh up 2     the same with two nodes (1 to 3; HAProxy gets
#                                only those as servers)
#   tools/cluster-up.sh down     stop the nodes and HAProxy
#
# NODE_ARGS adds options to every node, e.g.
#   NODE_ARGS="--bus redis://127.0.0.1:6379/14" tools/cluster-up.sh up 2
#
# Logs and pid files go to var/cluster/. Needs the venv of the README (.venv).
set -euo pipefail
cd "$(dirname "$0")/.."
run=var/cluster
twistd=.venv/bin/twistd
mkdir -p "$run"

down() {  # SIGTERM everything, then wait for the nodes' drain to finish
  pids=()
  for pidfile in "$run"/*.pid; do
    [ -e "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null && pids+=("$pid")
    rm -f "$pidfile"
  done
  for pid in "${pids[@]}"; do
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  done
  echo "cluster stopped"
}

if [ "${1:-up}" = down ]; then down; exit 0; fi
nodes=${2:-3}
case "$nodes" in
  1|2|3) ;;
  *) echo "usage: tools/cluster-up.sh [up [1|2|3]] | down" >&2; exit 2 ;;
esac
if ls "$run"/*.pid >/dev/null 2>&1; then
  echo "a cluster seems to be running (pid files in $run/): tools/cluster-up.sh down first" >&2
  exit 1
fi

up_port() {  # wait up to 30 s for a TCP listener
  for _ in $(seq 1 60); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.5
  done
  echo "nothing listens on 127.0.0.1:$1 ($2)" >&2; return 1
}

if ! (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null; then
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir "$run" --logfile "$PWD/$run/redis.log"
fi
up_port 6379 Redis
if ! (exec 3<>/dev/tcp/127.0.0.1/3306) 2>/dev/null; then
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
fi
up_port 3306 MySQL
mysql -uroot -h127.0.0.1 -e "CREATE DATABASE IF NOT EXISTS msgplatform CHARACTER SET utf8mb4"

# shellcheck disable=SC2086 # NODE_ARGS is split into options on purpose
for i in $(seq 1 "$nodes"); do
  $twistd --pidfile="$run/node$i.pid" --logfile="$run/node$i.log" msgplatform \
    --config etc/cluster.toml \
    --gate "haproxy:tcp:700$i:interface=127.0.0.1:backlog=1024" \
    --http "tcp:808$i:interface=127.0.0.1" \
    --rpc "tcp:710$i:interface=127.0.0.1" ${NODE_ARGS:-}
done
for i in $(seq 1 "$nodes"); do up_port "808$i" "node $i (see $run/node$i.log)"; done
# HAProxy balances over the nodes started: the servers of the others are left out.
drop=""
for i in $(seq $((nodes + 1)) 3); do drop="$drop/^ *server node$i /d;"; done
sed -e "$drop" etc/haproxy.cfg > "$run/haproxy.cfg"
haproxy -D -p "$run/haproxy.pid" -f "$run/haproxy.cfg"
up_port 7000 HAProxy
echo "cluster of $nodes up: phones -> 127.0.0.1:7000, HTTP API -> 127.0.0.1:8080 (logs in $run/)"
