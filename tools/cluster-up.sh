#!/usr/bin/env bash
# A cluster of one to three nodes on one machine, for a try-out: Redis,
# MariaDB/MySQL, `twistd msgplatform` nodes (etc/cluster.toml) and HAProxy in
# front (etc/haproxy.cfg: phones on 127.0.0.1:7000, HTTP API on 127.0.0.1:8080).
#
#   tools/cluster-up.sh [up] [N] [--redis-db N] [--mysql-db NAME]
#                               start N nodes (1 to 3, default 3); Redis and
#                               MySQL are started only if not running
#   tools/cluster-up.sh down    stop the nodes and HAProxy
#
# --redis-db picks the Redis database (default 0) and --mysql-db the MySQL
# database (default msgplatform, created if missing). NODE_ARGS adds options
# to every node, e.g. NODE_ARGS="--bus redis://127.0.0.1:6379/14"; a --redis or
# --mysql in NODE_ARGS wins over the two options above.
#
# Needs: the venv of the README (.venv), haproxy, and either running Redis and
# MySQL servers or redis-server and mariadbd to start them. Node i leases node
# id i; its log and pid file are var/cluster/node<i>.log and node<i>.pid. If a
# step fails, everything this run started is stopped again.
set -euo pipefail
cd "$(dirname "$0")/.."
run=var/cluster
twistd=.venv/bin/twistd
export PATH="$PATH:/usr/sbin:/sbin"

usage() {
  echo "usage: tools/cluster-up.sh [up] [1|2|3] [--redis-db N] [--mysql-db NAME] | down" >&2
  exit 2
}

# Stop what the pid files name (SIGTERM, then wait for the nodes' drain).
down() {
  local pids=() pidfile pid
  for pidfile in "$run"/*.pid; do
    [ -e "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    if kill "$pid" 2>/dev/null; then pids+=("$pid"); fi
    rm -f "$pidfile"
  done
  [ ${#pids[@]} -gt 0 ] && echo "stopping ${#pids[@]} process(es); the nodes drain first (up to 30 s)"
  for pid in "${pids[@]+"${pids[@]}"}"; do
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  done
  echo "cluster stopped"
}

command=up
nodes=3
redis_db=0
mysql_db=msgplatform
while [ $# -gt 0 ]; do
  case "$1" in
    up|down) command=$1 ;;
    1|2|3) nodes=$1 ;;
    --redis-db) [ $# -ge 2 ] || usage; redis_db=$2; shift ;;
    --mysql-db) [ $# -ge 2 ] || usage; mysql_db=$2; shift ;;
    -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) usage ;;
  esac
  shift
done
case "$redis_db" in ''|*[!0-9]*) echo "--redis-db: expected a number, got '$redis_db'" >&2; exit 2 ;; esac
case "$mysql_db" in ''|*[!A-Za-z0-9_]*) echo "--mysql-db: expected letters, digits and _, got '$mysql_db'" >&2; exit 2 ;; esac

mkdir -p "$run"
if [ "$command" = down ]; then down; exit 0; fi

# Pid files of a cluster that is still running stop us; stale ones are removed.
for pidfile in "$run"/*.pid; do
  [ -e "$pidfile" ] || continue
  if kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    echo "a cluster is running ($pidfile): tools/cluster-up.sh down first" >&2
    exit 1
  fi
  echo "removing stale $pidfile"
  rm -f "$pidfile"
done

# -- prerequisites, all checked before anything starts -----------------------
missing=()
[ -x "$twistd" ] || missing+=("the venv: python3 -m venv .venv && .venv/bin/pip install -e . --config-settings editable_mode=compat")
command -v haproxy >/dev/null || missing+=("haproxy: apt-get install haproxy")
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
if ! listening 6379 && ! command -v redis-server >/dev/null; then
  missing+=("Redis on 127.0.0.1:6379, or redis-server to start it: apt-get install redis-server")
fi
if ! listening 3306 && [ ! -x /usr/sbin/mariadbd ]; then
  missing+=("MySQL/MariaDB on 127.0.0.1:3306, or mariadbd to start it: apt-get install mariadb-server")
fi
command -v mysql >/dev/null || missing+=("the mysql client: apt-get install mariadb-client")
for port in 7000 8080; do  # HAProxy's, and the nodes' 700i, 808i, 710i, 707i
  if listening "$port"; then missing+=("127.0.0.1:$port free for HAProxy (a node of the README still running?)"); fi
done
for i in $(seq 1 "$nodes"); do
  for port in "700$i" "808$i" "710$i" "707$i"; do
    if listening "$port" && [ ! -e "$run/node$i.pid" ]; then missing+=("127.0.0.1:$port free for node $i"); fi
  done
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "tools/cluster-up.sh needs:" >&2
  printf '  - %s\n' "${missing[@]}" >&2
  exit 1
fi

# From here, a failure stops whatever this run started.
on_exit() {
  local status=$?
  if [ "$status" -ne 0 ]; then
    echo "start-up failed: stopping what was started" >&2
    down >&2
  fi
}
trap on_exit EXIT

wait_port() {  # port what: wait up to 30 s for a TCP listener
  for _ in $(seq 1 60); do listening "$1" && return 0; sleep 0.5; done
  echo "nothing listens on 127.0.0.1:$1 ($2)" >&2
  return 1
}

if ! listening 6379; then
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir "$PWD/$run" --logfile "$PWD/$run/redis.log"
fi
wait_port 6379 Redis
if ! listening 3306; then
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
fi
wait_port 3306 MySQL

node_args=${NODE_ARGS:-}
backends=()
case " $node_args " in *" --redis "*) ;; *) backends+=(--redis "redis://127.0.0.1:6379/$redis_db") ;; esac
case " $node_args " in
  *" --mysql "*) ;;
  *) mysql -uroot -h127.0.0.1 -e "CREATE DATABASE IF NOT EXISTS \`$mysql_db\` CHARACTER SET utf8mb4"
     backends+=(--mysql "mysql://root@127.0.0.1:3306/$mysql_db") ;;
esac

# Without -n, twistd returns once the node serves, or exits 1 with the reason.
# shellcheck disable=SC2086 # NODE_ARGS is split into options on purpose
for i in $(seq 1 "$nodes"); do
  if ! "$twistd" --pidfile="$run/node$i.pid" --logfile="$run/node$i.log" msgplatform \
      --config etc/cluster.toml --node-id "$i" "${backends[@]}" \
      --gate "haproxy:tcp:700$i:interface=127.0.0.1:backlog=1024" \
      --http "tcp:808$i:interface=127.0.0.1" \
      --rpc "tcp:710$i:interface=127.0.0.1" \
      --ws "tcp:707$i:interface=127.0.0.1" $node_args; then
    # twistd cuts the reason short; the node's log has it whole.
    why=$(grep -m1 -o 'start-up failed: .*' "$run/node$i.log" 2>/dev/null || true)
    echo "node $i did not start${why:+: $why} (see $run/node$i.log)" >&2
    exit 1
  fi
done
# HAProxy balances over the nodes started: the servers of the others are left out.
drop=""
for i in $(seq $((nodes + 1)) 3); do drop="$drop/^ *server node$i /d;"; done
sed -e "$drop" etc/haproxy.cfg > "$run/haproxy.cfg"
haproxy -D -p "$run/haproxy.pid" -f "$run/haproxy.cfg"
wait_port 7000 HAProxy
echo "cluster of $nodes up: phones -> 127.0.0.1:7000, HTTP API -> 127.0.0.1:8080 (logs in $run/)"
