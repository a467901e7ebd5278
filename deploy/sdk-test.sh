#!/usr/bin/env bash
# The Python SDK's tests (sdk/python) against a live cluster, from a fresh Debian machine.
#
#   deploy/sdk-test.sh [PYTEST ARGS...]      e.g. deploy/sdk-test.sh -k async -x
#
# It installs what is missing (python3-venv, nats-server, docker.io, busybox-static, nftables
# with apt), starts dockerd when `docker info` fails (and stops it again), builds the binaries
# (`cargo build --bins`; WARMPOOL_SKIP_CARGO_BUILD=1 when the caller just did) and the demo
# image, and makes a virtualenv under the build directory (${CARGO_TARGET_DIR:-target}/sdk-venv)
# with httpx, pytest and pytest-asyncio from PyPI and the SDK itself (never system-wide).
#
# Then it starts its own nats-server, one control-plane member with auth on (its bootstrap
# admin token, <data-dir>/admin.token, is the tests' key: they find it through
# WARMPOOL_TOKEN_FILE as a client on a member's host would), a real agent, and the gateway when
# this build has one, all on free ports with their own data directory, makes a pool of the demo
# image, waits for it to be warm and runs pytest. Everything it started is stopped, and every
# container and network the agent made is removed, also when a test fails or the script is
# interrupted; the processes' logs are printed when the tests fail.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET/debug
VENV=$TARGET/sdk-venv
IMAGE=${WARMPOOL_SDK_IMAGE:-warmpool-demo:latest}

say() { printf '\033[1m==>\033[0m %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else die "need root for: $*"; fi
}
apt_install() {
  say "installing $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

pkgs=()
command -v python3 >/dev/null || pkgs+=(python3)
python3 -c 'import venv, ensurepip' 2>/dev/null || pkgs+=(python3-venv)
command -v nats-server >/dev/null || pkgs+=(nats-server)
command -v dockerd >/dev/null || pkgs+=(docker.io)
dpkg -s busybox-static >/dev/null 2>&1 || pkgs+=(busybox-static)
command -v iptables >/dev/null || pkgs+=(iptables)
command -v nft >/dev/null || pkgs+=(nftables)
command -v curl >/dev/null || pkgs+=(curl)
if [ ${#pkgs[@]} -gt 0 ]; then apt_install "${pkgs[@]}"; fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/warmpool-sdk.XXXXXX")
NODE="sdk-$(head -c4 /dev/urandom | od -An -tx1 | tr -d ' \n')"
# A /64 under fd36::/16 that dev.sh (fd36:1::) and the other suites are unlikely to hold now.
PREFIX=$(printf 'fd36:%x::/64' $((0x1000 + RANDOM % 0xe000)))
PIDS=()
STARTED_DOCKERD=
PASSED=0

cleanup() {
  local rc=$?
  set +e
  # Newest first: gateway, agent, member, NATS.
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do kill "${PIDS[i]}" 2>/dev/null; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
  done
  if command -v docker >/dev/null; then
    ids=$(docker ps -aq --filter "label=io.warmpool.node=$NODE" 2>/dev/null)
    [ -n "$ids" ] && docker rm -f $ids >/dev/null 2>&1
    docker network rm "warmpool-$NODE" >/dev/null 2>&1
  fi
  "$ROOT/deploy/lib/remove-node-table.sh" "$NODE"
  if [ "$PASSED" -ne 1 ] && [ "$rc" -ne 0 ]; then
    for log in "$WORK"/*.log; do
      [ -f "$log" ] || continue
      printf -- '----- %s (last 40 lines) -----\n' "$(basename "$log")" >&2
      tail -40 "$log" >&2
    done
    # The whole logs, for a closer look: kept until the next failed run.
    rm -rf "$TARGET/sdk-test-logs" && mkdir -p "$TARGET/sdk-test-logs" &&
      cp "$WORK"/*.log "$TARGET/sdk-test-logs/" 2>/dev/null &&
      say "the processes' whole logs are in $TARGET/sdk-test-logs/"
  fi
  if [ -n "$STARTED_DOCKERD" ]; then
    say "stopping the dockerd this script started"
    as_root kill "$STARTED_DOCKERD" 2>/dev/null
  fi
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if ! docker info >/dev/null 2>&1; then
  say "starting dockerd"
  as_root sh -c "nohup dockerd >'$WORK/dockerd.log' 2>&1 & echo \$! >'$WORK/dockerd.pid'"
  STARTED_DOCKERD=$(cat "$WORK/dockerd.pid")
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  docker info >/dev/null 2>&1 || die "dockerd did not come up"
fi

if [ "${WARMPOOL_SKIP_CARGO_BUILD:-0}" != 1 ]; then
  command -v cargo >/dev/null || die "cargo is missing: install Rust (https://rustup.rs)"
  say "building the control plane, agent and gateway (cargo build --bins --no-default-features)"
  (cd "$ROOT" && cargo build --bins --no-default-features --quiet)
fi
for b in warmpool-control-plane warmpool-agent; do
  [ -x "$BIN/$b" ] || die "$BIN/$b is missing: run cargo build --bins"
done
"$ROOT/deploy/demo-image/build.sh" "$IMAGE" >&2

say "python virtualenv $VENV (httpx, pytest, pytest-asyncio, the SDK)"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check httpx pytest pytest-asyncio
"$VENV/bin/pip" install -q --disable-pip-version-check --force-reinstall --no-deps "$ROOT/sdk/python"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# wait_for WHAT SECONDS CMD...: runs CMD every 0.1 s until it succeeds.
wait_for() {
  local what=$1 secs=$2; shift 2
  local end=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$end" ] || die "timed out after ${secs}s waiting for $what"
    sleep 0.1
  done
}
start() { # start NAME CMD...: in the background, logging to $WORK/NAME.log
  local name=$1; shift
  RUST_LOG=${RUST_LOG:-info,openraft=warn,sled=warn,async_nats=warn} "$@" >"$WORK/$name.log" 2>&1 &
  PIDS+=($!)
}

NATS_PORT=$(free_port)
API_PORT=$(free_port)
API="http://127.0.0.1:$API_PORT"
DATA="$WORK/cp1"
TOKEN_FILE="$DATA/admin.token"

say "starting nats-server, a control-plane member (auth on) and an agent ($NODE, $PREFIX)"
start nats nats-server -a 127.0.0.1 -p "$NATS_PORT"
wait_for "nats-server" 10 bash -c "echo > /dev/tcp/127.0.0.1/$NATS_PORT"

cp_args=(--id 1 --bootstrap --nats-url "nats://127.0.0.1:$NATS_PORT" --api-addr "127.0.0.1:$API_PORT"
  --data-dir "$DATA" --node-timeout-secs 5)
GATEWAY=
if [ -x "$BIN/warmpool-gateway" ] && "$BIN/warmpool-control-plane" --help 2>&1 | grep -q -- '--gateway-url'; then
  GW_PORT=$(free_port)
  GATEWAY="http://127.0.0.1:$GW_PORT"
  cp_args+=(--gateway-url "$GATEWAY")
fi
start cp1 "$BIN/warmpool-control-plane" "${cp_args[@]}"
wait_for "the member's bootstrap admin token" 30 test -s "$TOKEN_FILE"
TOKEN=$(cat "$TOKEN_FILE")
api() { curl -sf -H "Authorization: Bearer $TOKEN" "$@"; }
wait_for "the member to lead" 30 api "$API/v1/ready"

start agent "$BIN/warmpool-agent" --node-id "$NODE" --nats-url "nats://127.0.0.1:$NATS_PORT" \
  --ipv6-prefix "$PREFIX" --heartbeat-ms 500 --label suite=sdk
if [ -n "$GATEWAY" ]; then
  say "starting the gateway on $GATEWAY"
  start gateway "$BIN/warmpool-gateway" --api-url "$API" --api-key-file "$TOKEN_FILE" --listen "127.0.0.1:$GW_PORT"
  wait_for "the gateway" 20 bash -c "echo > /dev/tcp/127.0.0.1/$GW_PORT"
fi
node_ready() { api "$API/v1/nodes" | python3 -c "import json,sys; sys.exit(0 if any(n['id']=='$NODE' and n['status']=='ready' for n in json.load(sys.stdin)) else 1)"; }
wait_for "the agent to join" 30 node_ready

POOL="sdk-$(head -c4 /dev/urandom | od -An -tx1 | tr -d ' \n')"
say "pool $POOL: 3 warm containers of $IMAGE"
api -X POST -H 'content-type: application/json' "$API/v1/pools" -d "{\"name\":\"$POOL\",\"image\":\"$IMAGE\",
  \"min_warm\":3,\"max_total\":20,\"lease_seconds\":300,
  \"health\":{\"probe\":{\"kind\":\"http\",\"path\":\"/healthz\"},\"interval_ms\":300}}" >/dev/null
pool_warm() { api "$API/v1/status" | python3 -c "import json,sys; sys.exit(0 if any(p['name']=='$POOL' and p['counts']['warm']>=3 for p in json.load(sys.stdin)['pools']) else 1)"; }
wait_for "3 warm containers in $POOL" 90 pool_warm

say "pytest (sdk/python/tests)"
cd "$ROOT/sdk/python"
WARMPOOL_URL="$API" WARMPOOL_TOKEN_FILE="$TOKEN_FILE" WARMPOOL_TEST_POOL="$POOL" \
  env -u WARMPOOL_TOKEN -u POOLCTL_TOKEN -u POOLCTL_URL -u POOLCTL_TOKEN_FILE \
  "$VENV/bin/python" -m pytest -p no:cacheprovider -rs -q tests "$@"
PASSED=1
