#!/usr/bin/env bash
# A Warmpool cluster for benchmarks: release builds, NATS, 3 control-plane members and one
# real agent on this host's dockerd, on ports and an IPv6 /64 of its own (so it runs next to
# `deploy/dev.sh up`). Auth is off and members log warnings only: a benchmark on loopback.
#
#   deploy/bench/cluster.sh up      build (cargo build --release --bins), start, wait for voters
#   deploy/bench/cluster.sh up --nats-cluster   the same on a NATS cluster of three servers
#                                   joined by routes (ports 4322-4324, routes 6322-6324)
#   deploy/bench/cluster.sh down    stop it and remove its containers and network
#   deploy/bench/cluster.sh env     print POOLCTL_URL for it
#
# Everything lives under .bench/ (logs, pids, Raft data). Ports: WARMPOOL_BENCH_API_PORT
# (7170, 7171, 7172) and WARMPOOL_BENCH_NATS_PORT (4322); node bench-local on fd36:be::/64.
#
# The members and nats-server run under real-time round-robin scheduling (`chrt -r 10`), the
# agent and dockerd under the normal scheduler: on one host, the allocation path otherwise
# waits for the CPU behind Docker's work (docs/BENCHMARKS.md). WARMPOOL_BENCH_RT=0 runs them
# all under the normal scheduler.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
DIR="$ROOT/.bench"
. "$ROOT/deploy/lib/bench-alone.sh"
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BIN="$TARGET/release"
API_PORT=${WARMPOOL_BENCH_API_PORT:-7170}
NATS_PORT=${WARMPOOL_BENCH_NATS_PORT:-4322}
NATS_ROUTE_PORT=${WARMPOOL_BENCH_NATS_ROUTE_PORT:-6322}
NATS_CLUSTER=0
[ "${2:-}" = "--nats-cluster" ] && NATS_CLUSTER=1
NODE_ID=${WARMPOOL_BENCH_NODE:-bench-local}
PREFIX=${WARMPOOL_BENCH_PREFIX:-fd36:be::/64}
LOG=${WARMPOOL_BENCH_LOG:-warn}

say() { printf '\033[1m==>\033[0m %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

urls() {
  echo "http://127.0.0.1:$API_PORT,http://127.0.0.1:$((API_PORT + 1)),http://127.0.0.1:$((API_PORT + 2))"
}

# shellcheck source=deploy/lib/proc.sh
. "$ROOT/deploy/lib/proc.sh"
running() { [ -f "$DIR/$1.pid" ] && alive "$(cat "$DIR/$1.pid")"; }

spawn() { # name, command...
  local name=$1; shift
  running "$name" && return
  RUST_LOG=$LOG nohup "$@" >"$DIR/$name.log" 2>&1 &
  echo $! >"$DIR/$name.pid"
}

# shellcheck source=deploy/lib/bench-rt.sh
. "$ROOT/deploy/lib/bench-rt.sh"

up() {
  docker info >/dev/null 2>&1 || die "dockerd is not running (deploy/dev.sh up starts it)"
  # shellcheck disable=SC2046 # its own processes, from an earlier `up`, do not count
  bench_alone $(cat "$DIR"/*.pid 2>/dev/null)
  say "building release binaries (cargo build --release --bins)"
  (cd "$ROOT" && cargo build --release --bins --quiet)
  "$ROOT/deploy/demo-image/build.sh" >&2
  mkdir -p "$DIR"
  # chrt execs the command, so the pid spawn records is the process's own.
  bench_rt "members and nats-server"
  local nats_url="nats://127.0.0.1:$NATS_PORT"
  if [ "$NATS_CLUSTER" = 1 ]; then
    local i routes="nats://127.0.0.1:$NATS_ROUTE_PORT,nats://127.0.0.1:$((NATS_ROUTE_PORT + 1)),nats://127.0.0.1:$((NATS_ROUTE_PORT + 2))"
    for i in 0 1 2; do
      spawn "nats$i" "${RT_PRIO[@]}" nats-server -a 127.0.0.1 -p "$((NATS_PORT + i))" -n "bench-nats-$i" \
        --cluster_name warmpool-bench --cluster "nats://127.0.0.1:$((NATS_ROUTE_PORT + i))" --routes "$routes"
    done
    nats_url="$nats_url,nats://127.0.0.1:$((NATS_PORT + 1)),nats://127.0.0.1:$((NATS_PORT + 2))"
  else
    spawn nats "${RT_PRIO[@]}" nats-server -a 127.0.0.1 -p "$NATS_PORT"
  fi
  spawn cp1 "${RT_PRIO[@]}" "$BIN/warmpool-control-plane" --id 1 --bootstrap --insecure-no-auth --data-dir "$DIR/cp1" \
    --api-addr "127.0.0.1:$API_PORT" --nats-url "$nats_url"
  for m in 2 3; do
    spawn "cp$m" "${RT_PRIO[@]}" "$BIN/warmpool-control-plane" --id "$m" --join --insecure-no-auth --data-dir "$DIR/cp$m" \
      --api-addr "127.0.0.1:$((API_PORT + m - 1))" --nats-url "$nats_url"
  done
  spawn agent "$BIN/warmpool-agent" --node-id "$NODE_ID" --ipv6-prefix "$PREFIX" \
    --nats-url "$nats_url"
  local voters=0
  for _ in $(seq 1 150); do
    voters=$(POOLCTL_URL=$(urls) "$BIN/poolctl" -o json cluster status 2>/dev/null |
      jq '[.members[] | select(.role == "voter")] | length' 2>/dev/null || echo 0)
    [ "$voters" = 3 ] && break
    sleep 0.2
  done
  [ "$voters" = 3 ] || die "the members did not become 3 voters (see .bench/cp*.log)"
  say "up: POOLCTL_URL=$(urls) (poolctl: $BIN/poolctl)"
}

stop_pid() {
  local name=$1
  if running "$name"; then
    kill "$(cat "$DIR/$name.pid")" 2>/dev/null || true
    for _ in $(seq 1 50); do running "$name" || break; sleep 0.1; done
    running "$name" && kill -9 "$(cat "$DIR/$name.pid")" 2>/dev/null || true
  fi
  rm -f "$DIR/$name.pid"
}

down() {
  stop_pid agent
  for m in cp1 cp2 cp3; do stop_pid "$m"; done
  for n in nats nats0 nats1 nats2; do stop_pid "$n"; done
  local ids
  ids=$(docker ps -aq --filter "label=io.warmpool.node=$NODE_ID" 2>/dev/null || true)
  # 16 at a time: `docker rm -f` of hundreds at once has hung dockerd 20.10 here.
  [ -n "$ids" ] && { echo "$ids" | xargs -n 16 docker rm -f >/dev/null 2>&1 || true; }
  docker network rm "warmpool-$NODE_ID" >/dev/null 2>&1 || true
  "$ROOT/deploy/lib/remove-node-table.sh" "$NODE_ID"
  rm -rf "$DIR"/cp1 "$DIR"/cp2 "$DIR"/cp3
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  env) echo "export POOLCTL_URL=$(urls)" ;;
  *) echo "usage: deploy/bench/cluster.sh up [--nats-cluster]|down|env" >&2; exit 2 ;;
esac
