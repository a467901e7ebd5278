#!/usr/bin/env bash
# A burst against the paused tier (issue 17): a pool with `min_warm: 3, min_paused: 30`, both
# tiers full, then 30 allocations sent within 2 s, one client (connection) each, `wait_ms`
# 10000. Prints each one's latency measured from its client and the tier that served it, how
# many came in <= 100 ms, whether every granted container answers on its port, and how long
# the tiers took to refill. The measuring is `poolctl bench --burst` (cli/src/tiers.rs); this
# script builds release binaries and brings up a cluster with a real agent for it.
#
#   deploy/bench/burst.sh [-n N] [--warm W] [--paused P] [--within D] [--expect-fast K]
#                         [--members M] [--debug] [--bin-dir DIR]
#
#   -n N             allocations in the burst (default 30)
#   --warm W         the pool's min_warm (default 3)
#   --paused P       the pool's min_paused (default N)
#   --within D       the window the burst is sent in (default 2s)
#   --expect-fast K  exit 1 when fewer than K came in <= 100 ms (default: 90% of N, rounded up:
#                    27 of 30); a burst also fails when an allocation is refused, a container
#                    does not answer, or the tiers do not refill
#   --members M      control-plane members (default 3)
#   --debug          debug build instead of release
#   --bin-dir DIR    the binaries already built in DIR; no build
#
# Its own NATS, members and agent, on free ports, a node id and IPv6 /64 of its own: it runs
# next to `deploy/dev.sh up` and `deploy/bench/cluster.sh up`. Everything it started
# (processes, containers, the network, the agent's nftables table) goes at exit, whatever the
# exit.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
. "$ROOT/deploy/lib/bench-alone.sh"
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
COUNT=30
WARM=3
PAUSED=
WITHIN=2s
EXPECT=
MEMBERS=3
PROFILE=release
BIN_DIR=
while [ $# -gt 0 ]; do
  case "$1" in
    -n) COUNT=$2; shift 2 ;;
    --warm) WARM=$2; shift 2 ;;
    --paused) PAUSED=$2; shift 2 ;;
    --within) WITHIN=$2; shift 2 ;;
    --expect-fast) EXPECT=$2; shift 2 ;;
    --members) MEMBERS=$2; shift 2 ;;
    --debug) PROFILE=debug; shift ;;
    --bin-dir) BIN_DIR=$2; shift 2 ;;
    -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
bench_alone
positive() { [[ "$2" =~ ^[1-9][0-9]*$ ]] || { echo "error: $1 wants a positive count" >&2; exit 2; }; }
positive -n "$COUNT"
[[ "$WARM" =~ ^[0-9]+$ ]] || { echo "error: --warm wants a count" >&2; exit 2; }
PAUSED=${PAUSED:-$COUNT}
positive --paused "$PAUSED"
EXPECT=${EXPECT:-$(( (COUNT * 9 + 9) / 10 ))}
[[ "$EXPECT" =~ ^[0-9]+$ ]] || { echo "error: --expect-fast wants a count" >&2; exit 2; }
positive --members "$MEMBERS"

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

command -v jq >/dev/null || die "jq is needed (apt-get install jq)"
command -v nats-server >/dev/null || die "nats-server is needed (deploy/dev.sh installs it)"
docker info >/dev/null 2>&1 || die "dockerd is not running"

if [ -n "$BIN_DIR" ]; then
  PROFILE="as built in $BIN_DIR"
elif [ "$PROFILE" = release ]; then
  say "building release binaries (cargo build --release --bins)"
  (cd "$ROOT" && cargo build --release --bins --quiet)
else
  say "building debug binaries (cargo build --bins --no-default-features)"
  (cd "$ROOT" && cargo build --bins --no-default-features --quiet)
fi
BIN=${BIN_DIR:-$TARGET/$PROFILE}
for b in poolctl warmpool-control-plane warmpool-agent; do
  [ -x "$BIN/$b" ] || die "$BIN/$b is missing (cargo build --bins)"
done
"$ROOT/deploy/demo-image/build.sh" >&2

RUN=$(printf '%04x%04x' $((RANDOM)) $((RANDOM)))
NODE="burst$RUN"
PREFIX="fd36:bf:${RUN:0:4}:${RUN:4:4}::/64"
DIR=$(mktemp -d "${TMPDIR:-/tmp}/warmpool-burst.XXXXXX")
PIDS=()

cleanup() {
  local pid ids
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  ids=$(docker ps -aq --filter "label=io.warmpool.node=$NODE" 2>/dev/null || true)
  # 16 at a time: `docker rm -f` of hundreds at once has hung dockerd 20.10 here.
  [ -n "$ids" ] && { echo "$ids" | xargs -n 16 docker rm -f >/dev/null 2>&1 || true; }
  docker network rm "warmpool-$NODE" >/dev/null 2>&1 || true
  if command -v nft >/dev/null; then nft delete table inet "warmpool_$NODE" 2>/dev/null || true; fi
  rm -rf "$DIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

NATS_PORT=$(free_port)
NATS_URL="nats://127.0.0.1:$NATS_PORT"
URLS=()
say "starting NATS, $MEMBERS control-plane member(s) and an agent (node $NODE, $PREFIX; build: $PROFILE)"
nats-server -a 127.0.0.1 -p "$NATS_PORT" >"$DIR/nats.log" 2>&1 &
PIDS+=($!)
for m in $(seq 1 "$MEMBERS"); do
  port=$(free_port)
  URLS+=("http://127.0.0.1:$port")
  if [ "$m" = 1 ]; then start=--bootstrap; else start=--join; fi
  RUST_LOG=warn "$BIN/warmpool-control-plane" --id "$m" "$start" --insecure-no-auth \
    --data-dir "$DIR/cp$m" --api-addr "127.0.0.1:$port" --nats-url "$NATS_URL" >"$DIR/cp$m.log" 2>&1 &
  PIDS+=($!)
done
POOLCTL_URL=$(IFS=,; echo "${URLS[*]}")
export POOLCTL_URL
RUST_LOG=warn "$BIN/warmpool-agent" --node-id "$NODE" --ipv6-prefix "$PREFIX" --nats-url "$NATS_URL" \
  --state-dir "$DIR/agent" --workspace-store "file://$DIR/workspaces" >"$DIR/agent.log" 2>&1 &
PIDS+=($!)
ready=0
for _ in $(seq 1 300); do
  voters=$("$BIN/poolctl" -o json cluster status 2>/dev/null |
    jq '[.members[] | select(.role == "voter")] | length' 2>/dev/null || echo 0)
  node=$("$BIN/poolctl" -o json nodes 2>/dev/null |
    jq --arg n "$NODE" '[.[] | select(.id == $n and .status == "ready")] | length' 2>/dev/null || echo 0)
  if [ "$voters" = "$MEMBERS" ] && [ "$node" = 1 ]; then
    ready=1
    break
  fi
  sleep 0.2
done
[ "$ready" = 1 ] || { tail -n 20 "$DIR"/*.log >&2; die "the members or the node did not become ready"; }

say "burst: $COUNT allocations within $WITHIN on a pool with min_warm $WARM, min_paused $PAUSED"
status=0
"$BIN/poolctl" bench --burst "$COUNT" --within "$WITHIN" --warm "$WARM" --paused "$PAUSED" \
  --wait-ms 10000 --expect-fast "$EXPECT" --fill-timeout-secs $((120 + 2 * (WARM + PAUSED))) ||
  status=$?
[ "$status" = 0 ] || { tail -n 20 "$DIR/agent.log" >&2; say "the burst fell short (exit $status)"; }
exit "$status"
