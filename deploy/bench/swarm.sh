#!/usr/bin/env bash
# Docker Swarm against Warmpool, in one run on this host: how long Swarm takes to bring one
# more replica of the demo image to running (and answering HTTP), against how long Warmpool
# takes to hand out a warm container.
#
#   deploy/bench/swarm.sh [-r ROUNDS] [-n WARM_CYCLES] [--json FILE]
#
# Swarm: a service of warmpool-demo:latest (the local image, --no-resolve-image: no registry)
# with the limits a pool's containers get, each task publishing its port on the host
# (mode=host), so the new task itself is probed, not whichever the routing mesh picks. Each
# round scales the service from n to n+1 through the Docker API (curl on the socket, no CLI
# start-up in the timing) and polls every 10 ms until the new task is running, then until its
# published port answers GET /healthz with 200. The service starts at 1 replica.
#
# Warmpool: `poolctl bench -n WARM_CYCLES` (a temporary pool, allocations through the leader)
# against POOLCTL_URL, or against deploy/bench/cluster.sh, started for the run and stopped
# after, when POOLCTL_URL is not set; poolctl runs as cluster.sh runs the members (real-time
# unless WARMPOOL_BENCH_RT=0).
#
# Swarm is left as it was found: a swarm this script initialised (on 127.0.0.1) is left again,
# and the service is removed either way.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
POOLCTL="$TARGET/release/poolctl"
# shellcheck source=deploy/lib/bench-rt.sh
. "$ROOT/deploy/lib/bench-rt.sh"
IMAGE=warmpool-demo:latest
ROUNDS=10
WARM_CYCLES=100
JSON=
while [ $# -gt 0 ]; do
  case "$1" in
    -r|--rounds) ROUNDS=$2; shift 2 ;;
    -n|--cycles) WARM_CYCLES=$2; shift 2 ;;
    --json) JSON=$2; shift 2 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done

say() { printf '\033[1m==>\033[0m %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
for tool in docker curl jq; do command -v $tool >/dev/null || die "$tool is missing"; done
SOCK=/var/run/docker.sock
api() { # method, path, [json body]
  if [ $# -ge 3 ]; then
    curl -sS --unix-socket "$SOCK" -X "$1" -H 'Content-Type: application/json' -d "$3" "http://localhost/v1.41$2"
  else
    curl -sS --unix-socket "$SOCK" -X "$1" "http://localhost/v1.41$2"
  fi
}
now_ms() { date +%s%3N; }

SERVICE="warmpool-bench-$(date +%s)"
INITED=0
STARTED_CLUSTER=0
HAD_GWBRIDGE=0
docker network inspect docker_gwbridge >/dev/null 2>&1 && HAD_GWBRIDGE=1

cleanup() {
  docker service rm "$SERVICE" >/dev/null 2>&1 || true
  if [ "$INITED" = 1 ]; then
    say "leaving the swarm this script created"
    docker swarm leave --force >/dev/null 2>&1 || true
    if [ "$HAD_GWBRIDGE" = 0 ]; then
      docker network rm docker_gwbridge >/dev/null 2>&1 || true
    fi
  fi
  if [ "$STARTED_CLUSTER" = 1 ]; then
    "$ROOT/deploy/bench/cluster.sh" down || true
  fi
}
trap cleanup EXIT

median() { sort -n | awk '{a[NR]=$1} END {if (NR==0) print "nan"; else if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }

# ---- Warmpool ----
if [ -z "${POOLCTL_URL:-}" ]; then
  "$ROOT/deploy/bench/cluster.sh" up
  STARTED_CLUSTER=1
  eval "$("$ROOT/deploy/bench/cluster.sh" env)"
else
  (cd "$ROOT" && cargo build --release --bins --quiet)
fi
"$ROOT/deploy/demo-image/build.sh" "$IMAGE" >/dev/null
say "Warmpool: $WARM_CYCLES allocate+release cycles through the leader"
bench_rt "poolctl"
WARM_JSON=$("${RT_PRIO[@]}" "$POOLCTL" -o json bench -n "$WARM_CYCLES" --via leader --image "$IMAGE")
WARM_P50=$(jq '.warm.alloc_ms.p50 * 100 | round / 100' <<<"$WARM_JSON")
WARM_P99=$(jq '.warm.alloc_ms.p99 * 100 | round / 100' <<<"$WARM_JSON")

# ---- Swarm ----
STATE=$(docker info --format '{{.Swarm.LocalNodeState}}')
case "$STATE" in
  active) say "using the active swarm" ;;
  inactive)
    say "initialising a swarm on 127.0.0.1 (left again at the end)"
    docker swarm init --advertise-addr 127.0.0.1 >/dev/null
    INITED=1
    ;;
  *) die "swarm state is '$STATE'; expected active or inactive" ;;
esac
docker service create --detach --quiet --no-resolve-image --name "$SERVICE" \
  --replicas 1 --limit-cpu 0.5 --limit-memory 128M --limit-pids 256 --cap-drop ALL \
  --publish mode=host,target=8080 --label io.warmpool.bench=swarm "$IMAGE" >/dev/null

# Prints the ids of the service's tasks that are running.
running_tasks() {
  api GET "/tasks?filters=$(jq -rn --arg s "$SERVICE" '{service: [$s], "desired-state": ["running"]} | @uri')" |
    jq -r '.[] | select(.Status.State == "running") | .ID' | sort
}
# Prints the host port task $1 published.
task_port() {
  api GET "/tasks/$1" | jq -r '.Status.PortStatus.Ports[0].PublishedPort // empty'
}
wait_running() { # want
  local n
  for _ in $(seq 1 6000); do
    n=$(running_tasks | wc -l)
    [ "$n" -ge "$1" ] && return 0
    sleep 0.01
  done
  return 1
}
wait_running 1 || die "the first replica did not start"

SPEC_VERSION() { api GET "/services/$SERVICE" | jq '.Version.Index'; }
RUN_MS=()
HTTP_MS=()
for round in $(seq 1 "$ROUNDS"); do
  want=$((round + 1))
  before=$(running_tasks)
  spec=$(api GET "/services/$SERVICE" | jq --argjson n "$want" '.Spec | .Mode.Replicated.Replicas = $n')
  version=$(SPEC_VERSION)
  t0=$(now_ms)
  api POST "/services/$SERVICE/update?version=$version" "$spec" >/dev/null
  new=
  for _ in $(seq 1 6000); do
    new=$(comm -13 <(echo "$before") <(running_tasks) | head -1)
    [ -n "$new" ] && break
    sleep 0.01
  done
  [ -n "$new" ] || die "round $round: no new task ran within 60 s"
  t_run=$(now_ms)
  port=$(task_port "$new")
  [ -n "$port" ] || die "round $round: task $new has no published port"
  answered=0
  for _ in $(seq 1 6000); do
    if [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/healthz" 2>/dev/null)" = 200 ]; then
      answered=1
      break
    fi
    sleep 0.01
  done
  [ "$answered" = 1 ] || die "round $round: the new replica did not answer /healthz on port $port within 60 s"
  t_http=$(now_ms)
  RUN_MS+=($((t_run - t0)))
  HTTP_MS+=($((t_http - t0)))
  say "swarm round $round: replica $want running after $((t_run - t0)) ms, answering after $((t_http - t0)) ms"
done

RUN_MED=$(printf '%s\n' "${RUN_MS[@]}" | median)
HTTP_MED=$(printf '%s\n' "${HTTP_MS[@]}" | median)
RATIO=$(jq -n --argjson a "$HTTP_MED" --argjson b "$WARM_P50" '$a / $b | floor')
RATIO_RUN=$(jq -n --argjson a "$RUN_MED" --argjson b "$WARM_P50" '$a / $b | floor')
echo
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), dockerd $(docker version --format '{{.Server.Version}}')"
echo "Warmpool warm allocation ($WARM_CYCLES through the leader): p50 $WARM_P50 ms, p99 $WARM_P99 ms"
echo "Swarm, one more replica ($ROUNDS rounds): running after ${RUN_MED} ms, answering HTTP after ${HTTP_MED} ms (medians; each: ${HTTP_MS[*]})"
echo "Swarm / Warmpool at the median: ${RATIO}x to answering HTTP, ${RATIO_RUN}x to running"
if [ -n "$JSON" ]; then
  jq -n --argjson warm "$WARM_JSON" --arg run "${RUN_MS[*]}" --arg http "${HTTP_MS[*]}" \
    --argjson run_med "$RUN_MED" --argjson http_med "$HTTP_MED" \
    '{warmpool: $warm, swarm: {running_ms: ($run | split(" ") | map(tonumber)), answering_ms: ($http | split(" ") | map(tonumber)), running_median_ms: $run_med, answering_median_ms: $http_med}}' >"$JSON"
fi
