#!/usr/bin/env bash
# Refill at the host's limit: in one run, how fast this host's dockerd starts containers of the
# pool's image with P parallel `docker run -d` (the ceiling), and how fast a real agent fills a
# pool from 0 to N warm containers (created, started, isolated and probed healthy), measured
# from the control plane's events. Prints both and the ratio.
#
#   deploy/bench/refill.sh [-n N] [-p P] [--batch-size B] [--pacing-ms MS] [--debug]
#                          [--bin-dir DIR] [--agent BIN] [--agent-arg ARG]...
#
#   -n N         containers in each phase (default 50)
#   -p P         parallel `docker run` of the raw phase (default 16, the agent's default
#                --max-concurrent-creates)
#   --batch-size B, --pacing-ms MS
#                the pool's scaling (default P and 200): the control plane plans at most B
#                containers per MS and has at most 2 x B being made at once, so the pool's
#                default (4) would cap the refill at 8 creates in flight, whatever the agent
#   --debug      debug build instead of release (the suite's short form)
#   --bin-dir DIR   the binaries already built in DIR; no build
#   --agent BIN  this agent binary instead of the one built (to compare two versions)
#   --agent-arg ARG   one more argument for the agent (e.g. --agent-arg=--max-concurrent-creates=4)
#
# Its own NATS, control-plane member and agent, on free ports, a node id and IPv6 /64 of its
# own: it runs next to `deploy/dev.sh up` and `deploy/bench/cluster.sh up`. Everything it
# started (processes, containers, the network, the agent's nftables table) goes at exit,
# whatever the exit.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
. "$ROOT/deploy/lib/bench-alone.sh"
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
COUNT=50
PARALLEL=16
PROFILE=release
AGENT_BIN=
AGENT_ARGS=()
BIN_DIR=
BATCH=
PACING=200
while [ $# -gt 0 ]; do
  case "$1" in
    -n) COUNT=$2; shift 2 ;;
    -p) PARALLEL=$2; shift 2 ;;
    --batch-size) BATCH=$2; shift 2 ;;
    --pacing-ms) PACING=$2; shift 2 ;;
    --debug) PROFILE=debug; shift ;;
    --bin-dir) BIN_DIR=$2; shift 2 ;;
    --agent) AGENT_BIN=$2; shift 2 ;;
    --agent-arg) AGENT_ARGS+=("$2"); shift 2 ;;
    --agent-arg=*) AGENT_ARGS+=("${1#--agent-arg=}"); shift ;;
    -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
bench_alone
[[ "$COUNT" =~ ^[1-9][0-9]*$ ]] || { echo "error: -n wants a positive count" >&2; exit 2; }
[[ "$PARALLEL" =~ ^[1-9][0-9]*$ ]] || { echo "error: -p wants a positive count" >&2; exit 2; }
BATCH=${BATCH:-$PARALLEL}
[[ "$BATCH" =~ ^[1-9][0-9]*$ ]] || { echo "error: --batch-size wants a positive count" >&2; exit 2; }
[[ "$PACING" =~ ^[0-9]+$ ]] || { echo "error: --pacing-ms wants milliseconds" >&2; exit 2; }

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
now_ms() { date +%s%3N; }
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
AGENT_BIN=${AGENT_BIN:-$BIN/warmpool-agent}
"$ROOT/deploy/demo-image/build.sh" >&2
IMAGE=warmpool-demo:latest

RUN=$(printf '%04x%04x' $((RANDOM)) $((RANDOM)))
NODE="refill$RUN"
PREFIX="fd36:ef:${RUN:0:4}:${RUN:4:4}::/64"
NETWORK="warmpool-$NODE"
RAW_LABEL="io.warmpool.bench=refill-$RUN"
DIR=$(mktemp -d "${TMPDIR:-/tmp}/warmpool-refill.XXXXXX")
PIDS=()

cleanup() {
  local pid ids
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  ids=$(docker ps -aq --filter "label=$RAW_LABEL" 2>/dev/null || true)
  # 16 at a time: `docker rm -f` of hundreds at once has hung dockerd 20.10 here.
  [ -n "$ids" ] && { echo "$ids" | xargs -n 16 docker rm -f >/dev/null 2>&1 || true; }
  ids=$(docker ps -aq --filter "label=io.warmpool.node=$NODE" 2>/dev/null || true)
  # 16 at a time: `docker rm -f` of hundreds at once has hung dockerd 20.10 here.
  [ -n "$ids" ] && { echo "$ids" | xargs -n 16 docker rm -f >/dev/null 2>&1 || true; }
  docker network rm "$NETWORK" >/dev/null 2>&1 || true
  if command -v nft >/dev/null; then nft delete table inet "warmpool_$NODE" 2>/dev/null || true; fi
  rm -rf "$DIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

NATS_PORT=$(free_port)
API_PORT=$(free_port)
METRICS_PORT=$(free_port)
NATS_URL="nats://127.0.0.1:$NATS_PORT"
export POOLCTL_URL="http://127.0.0.1:$API_PORT"
poolctl() { "$BIN/poolctl" "$@"; }

say "starting NATS, one control-plane member and an agent (node $NODE, $PREFIX)"
nats-server -a 127.0.0.1 -p "$NATS_PORT" >"$DIR/nats.log" 2>&1 &
PIDS+=($!)
RUST_LOG=warn "$BIN/warmpool-control-plane" --id 1 --bootstrap --insecure-no-auth \
  --data-dir "$DIR/cp" --api-addr "127.0.0.1:$API_PORT" --nats-url "$NATS_URL" >"$DIR/cp.log" 2>&1 &
PIDS+=($!)
RUST_LOG=warn "$AGENT_BIN" --node-id "$NODE" --ipv6-prefix "$PREFIX" --nats-url "$NATS_URL" \
  --state-dir "$DIR/agent" --workspace-store "file://$DIR/workspaces" \
  --metrics-addr "127.0.0.1:$METRICS_PORT" ${AGENT_ARGS[@]+"${AGENT_ARGS[@]}"} >"$DIR/agent.log" 2>&1 &
PIDS+=($!)
ready=0
for _ in $(seq 1 300); do
  if [ "$(poolctl -o json nodes 2>/dev/null | jq --arg n "$NODE" '[.[] | select(.id == $n and .status == "ready")] | length' 2>/dev/null)" = 1 ]; then
    ready=1
    break
  fi
  sleep 0.2
done
[ "$ready" = 1 ] || { tail -n 20 "$DIR"/*.log >&2; die "the node did not become ready"; }

# (a) The host's ceiling: N containers of the pool's image, P `docker run -d` at a time, on the
# agent's network (so each gets its IPv6 address as the agent's do).
say "raw: $COUNT x docker run -d, $PARALLEL in parallel"
start=$(now_ms)
seq 1 "$COUNT" | xargs -P "$PARALLEL" -I{} docker run -d --label "$RAW_LABEL" \
  --name "refill-$RUN-{}" --network "$NETWORK" "$IMAGE" >"$DIR/raw.ids" 2>"$DIR/raw.err" ||
  { cat "$DIR/raw.err" >&2; die "docker run failed"; }
raw_ms=$(( $(now_ms) - start ))
[ "$(wc -l <"$DIR/raw.ids")" = "$COUNT" ] || { cat "$DIR/raw.err" >&2; die "not every docker run started a container"; }
docker rm -f $(cat "$DIR/raw.ids") >/dev/null

# (b) The agent's refill: a pool from 0 to N warm. The clock starts at the pool's creation (its
# event) and stops at the N-th container_warm.
say "agent: pool of $COUNT warm containers"
POOL="refill$RUN"
poolctl pool create "$POOL" --image "$IMAGE" --min-warm "$COUNT" --max-total "$COUNT" \
  --cpu-millis 50 --memory-mb 32 --health-path /healthz \
  --batch-size "$BATCH" --pacing-ms "$PACING" >/dev/null
events() { poolctl -o json events --pool "$POOL" --limit 1000; }
deadline=$(( $(now_ms) + 120000 + COUNT * 2000 ))
warm=0
while [ "$(now_ms)" -lt "$deadline" ]; do
  warm=$(events | jq '[.[] | select(.kind == "container_warm")] | length')
  [ "$warm" -ge "$COUNT" ] && break
  sleep 0.2
done
[ "$warm" -ge "$COUNT" ] || { tail -n 20 "$DIR/agent.log" >&2; die "only $warm of $COUNT containers became warm"; }
figures=$(events | jq --argjson n "$COUNT" '
  def ms: capture("^(?<s>[^.Z]+)(\\.(?<f>[0-9]+))?Z$") as $c
    | (($c.s + "Z") | fromdate) * 1000 + ((($c.f // "") + "000")[0:3] | tonumber);
  map(.at |= ms)
  | (map(select(.kind == "pool_created")) | .[0].at) as $t0
  | (map(select(.kind == "container_created")) | map({key: .container, value: .at}) | from_entries) as $created
  | (map(select(.kind == "container_warm")) | sort_by(.at) | .[:$n]) as $warm
  | ($warm | map(.at - $created[.container]) | sort) as $d
  | {
      ms: ($warm[-1].at - $t0),
      p50: $d[(($d | length) * 0.5 | floor)],
      p90: $d[(($d | length) * 0.9 | floor)]
    }')
agent_ms=$(jq .ms <<<"$figures")
limit=$(curl -fsS "http://127.0.0.1:$METRICS_PORT/metrics" 2>/dev/null |
  awk '$1 == "warmpool_agent_create_limit" {print $2}')

awk -v n="$COUNT" -v p="$PARALLEL" -v raw="$raw_ms" -v agent="$agent_ms" \
  -v p50="$(jq .p50 <<<"$figures")" -v p90="$(jq .p90 <<<"$figures")" \
  -v limit="${limit:-?}" -v profile="$PROFILE" -v batch="$BATCH" -v pacing="$PACING" 'BEGIN {
  rr = n / (raw / 1000); ar = n / (agent / 1000)
  printf "build:  %s\n", profile
  printf "raw:    %d containers in %.2f s with %d parallel docker run -d: %.1f containers/s\n", n, raw / 1000, p, rr
  printf "agent:  %d containers warm in %.2f s (pool created to the last warm, batch_size %d, pacing_ms %d): %.1f containers/s\n", n, agent / 1000, batch, pacing, ar
  printf "        create to warm per container: p50 %d ms, p90 %d ms; create limit at the end: %s\n", p50, p90, limit
  printf "ratio:  the agent refills at %.0f%% of the raw rate\n", 100 * ar / rr
}'
