#!/usr/bin/env bash
# Sustained allocate+release throughput of the control plane: `poolctl bench` with many
# cycles in flight against a 3-member cluster whose agents are simulated (fleet-sim --hold),
# so that the figure is the control plane's, not Docker's: every cycle destroys its container
# and a real agent replaces it at dockerd's pace (see BENCHMARKS.md, "replenish").
#
#   deploy/bench/throughput.sh [-n CYCLES] [-c CONCURRENCY] [--json FILE]
#
# The members, nats-server and the load generator run under real-time round-robin scheduling
# (`chrt -r 10`), the simulated fleet under the normal scheduler, as `cluster.sh` runs them;
# WARMPOOL_BENCH_RT=0 runs them all under the normal scheduler.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
. "$ROOT/deploy/lib/bench-alone.sh"
# shellcheck source=deploy/lib/bench-rt.sh
. "$ROOT/deploy/lib/bench-rt.sh"
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
CYCLES=20000
CONCURRENCY=32
JSON=
while [ $# -gt 0 ]; do
  case "$1" in
    -n) CYCLES=$2; shift 2 ;;
    -c) CONCURRENCY=$2; shift 2 ;;
    --json) JSON=$2; shift 2 ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
bench_alone
(cd "$ROOT" && cargo build --release --bins --quiet)
READY=$(mktemp -u)
# 20 agents x 250 warm containers in one pool (fleet0), refilled in batches of 500.
"$TARGET/release/fleet-sim" --agents 20 --containers-per-agent 250 --pools 1 --batch-size 500 \
  --pacing-ms 10 --hold "$READY" >&2 &
SIM=$!
trap 'kill $SIM 2>/dev/null; wait $SIM 2>/dev/null || true' EXIT
for _ in $(seq 1 600); do [ -s "$READY" ] && break; sleep 0.2; done
[ -s "$READY" ] || { echo "error: the simulated fleet did not come up" >&2; exit 1; }
bench_rt "members, nats-server and poolctl"
# The fleet's children: the three members and nats-server.
PATH_PIDS=$(pgrep -P "$SIM" -f 'warmpool-control-plane|nats-server' || true)
[ "$(echo "$PATH_PIDS" | wc -w)" = 4 ] ||
  echo "warning: found $(echo "$PATH_PIDS" | wc -w) of the 3 members and nats-server to schedule" >&2
# shellcheck disable=SC2086 # one pid a word
bench_rt_pids $PATH_PIDS
ARGS=(--url "$(cat "$READY")" bench --pool fleet0 -n "$CYCLES" -c "$CONCURRENCY" --warmup 500)
if [ -n "$JSON" ]; then
  "${RT_PRIO[@]}" "$TARGET/release/poolctl" -o json "${ARGS[@]}" | tee "$JSON"
else
  "${RT_PRIO[@]}" "$TARGET/release/poolctl" "${ARGS[@]}"
fi
