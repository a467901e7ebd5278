#!/usr/bin/env bash
# Warmpool on one machine, for development and for trying it out.
#
#   deploy/dev.sh up      install what is missing, build (the dashboard too, when Node.js 20.19+
#                         is present), start NATS, 3 control-plane members with auth on and the
#                         dashboard at http://127.0.0.1:7070/, an agent and the gateway
#                         (http://127.0.0.1:8000/s/{allocation}/{port}/); create pool "demo"
#                         (min_warm 3) and wait until it is warm
#   deploy/dev.sh up --release   the same with release builds (what benchmarks measure;
#                         WARMPOOL_RELEASE=1 does the same)
#   deploy/dev.sh up --nats-cluster   NATS as a cluster of three servers joined by routes
#                         (client ports 4222-4224, routes 6222-6224); every member and the
#                         agent are given all three and move to another when theirs dies
#                         (WARMPOOL_NATS_CLUSTER=1 does the same); the flags combine
#   deploy/dev.sh down    stop what `up` started and remove the containers it made
#   deploy/dev.sh status  what is running
#   deploy/dev.sh test    install what is missing and run every test
#
# Everything `up` makes lives under .dev/ (logs, pids, Raft data, the env file).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEV="$ROOT/.dev"
RELEASE=${WARMPOOL_RELEASE:-0}
NATS_CLUSTER=${WARMPOOL_NATS_CLUSTER:-0}
for flag in "${@:2}"; do
  case "$flag" in
    --release) RELEASE=1 ;;
    --nats-cluster) NATS_CLUSTER=1 ;;
    *) echo "deploy/dev.sh: unknown flag $flag" >&2; exit 2 ;;
  esac
done
if [ "$RELEASE" = 1 ]; then PROFILE=release; else PROFILE=debug; fi
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/$PROFILE"
API_PORT=${WARMPOOL_DEV_API_PORT:-7070}
NATS_PORT=${WARMPOOL_DEV_NATS_PORT:-4222}
NATS_ROUTE_PORT=${WARMPOOL_DEV_NATS_ROUTE_PORT:-6222}
GATEWAY_PORT=${WARMPOOL_DEV_GATEWAY_PORT:-8000}
NODE_ID=${WARMPOOL_DEV_NODE:-local}
PREFIX=${WARMPOOL_DEV_PREFIX:-fd36:1::/64}
IMAGE=warmpool-demo:latest

# shellcheck source=deploy/lib/docker-live-restore.sh
. "$ROOT/deploy/lib/docker-live-restore.sh"

say() { printf '\033[1m==>\033[0m %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else die "need root for: $*"; fi
}

install_prereqs() {
  local pkgs=()
  command -v dockerd >/dev/null || pkgs+=(docker.io)
  command -v nats-server >/dev/null || pkgs+=(nats-server)
  dpkg -s busybox-static >/dev/null 2>&1 || pkgs+=(busybox-static)
  command -v curl >/dev/null || pkgs+=(curl)
  command -v openssl >/dev/null || pkgs+=(openssl)
  command -v ip >/dev/null || pkgs+=(iproute2)
  command -v nsenter >/dev/null || pkgs+=(util-linux)
  command -v iptables >/dev/null || pkgs+=(iptables)
  command -v nft >/dev/null || pkgs+=(nftables)
  dpkg -s faketime >/dev/null 2>&1 || pkgs+=(faketime)
  # tests/tests/image_pull.rs runs a real registry (Docker's distribution 2.8).
  command -v docker-registry >/dev/null || pkgs+=(docker-registry)
  command -v python3 >/dev/null || pkgs+=(python3)
  # deploy/bench/*.sh (refill.sh runs in the suite's short form) read JSON with jq.
  command -v jq >/dev/null || pkgs+=(jq)
  # The control plane's allocator (jemalloc) is built from C with make.
  command -v make >/dev/null || pkgs+=(make)
  command -v cc >/dev/null || pkgs+=(gcc)
  # The API fuzz run (`test`) installs schemathesis into a virtualenv.
  python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || pkgs+=(python3-venv)
  if [ ${#pkgs[@]} -gt 0 ]; then
    say "installing ${pkgs[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >/dev/null
  fi
  command -v cargo >/dev/null || die "cargo is missing: install Rust 1.85 or newer (https://rustup.rs), then run this again"
  install_moto
}

# The workspace tests' S3-protocol server: moto's, in a virtualenv kept in the cache (made
# once; tests/tests/workspaces.rs finds it there).
MOTO_VENV="${XDG_CACHE_HOME:-$HOME/.cache}/warmpool/moto"
install_moto() {
  [ -x "$MOTO_VENV/bin/moto_server" ] && return 0
  say "installing moto's S3 server into $MOTO_VENV (for the workspace tests)"
  python3 -m venv "$MOTO_VENV"
  "$MOTO_VENV/bin/pip" install -q 'moto[server]' >/dev/null
}

DOCKER_PIDFILE=/var/run/docker.pid
CONTAINERD_PIDFILE=/var/run/docker/containerd/containerd.pid

# shellcheck source=deploy/lib/proc.sh
. "$ROOT/deploy/lib/proc.sh"
pid_in() { [ -s "$1" ] && cat "$1" 2>/dev/null || true; }

# Waits up to $2 seconds (default 30) for process $1 to exit; false if it is still there.
wait_exit() {
  local pid=$1 secs=${2:-30} i
  for i in $(seq 1 $((secs * 10))); do
    alive "$pid" || return 0
    sleep 0.1
  done
  ! alive "$pid"
}

start_dockerd() {
  if docker info >/dev/null 2>&1; then return; fi
  mkdir -p "$DEV"
  # A dockerd (and the containerd it runs) still shutting down holds the pid file and the
  # sockets: starting another now fails with "pid file found". Wait for it to finish,
  # whether it then answers (someone restarted it) or exits.
  local old
  for old in "$(pid_in "$DOCKER_PIDFILE")" "$(pid_in "$CONTAINERD_PIDFILE")"; do
    if alive "$old"; then
      say "waiting for the previous dockerd/containerd (pid $old) to finish"
      for _ in $(seq 1 300); do
        docker info >/dev/null 2>&1 && return
        alive "$old" || break
        sleep 0.1
      done
      alive "$old" && die "pid $old (from a previous dockerd) is still running after 30 s; stop it (kill $old) and run this again"
    fi
  done
  docker info >/dev/null 2>&1 && return
  # A pid file whose process is gone is stale (dockerd killed hard): dockerd would refuse it.
  if [ -f "$DOCKER_PIDFILE" ] && ! alive "$(pid_in "$DOCKER_PIDFILE")"; then
    as_root rm -f "$DOCKER_PIDFILE"
  fi
  say "starting dockerd (log: .dev/dockerd.log)"
  as_root sh -c "nohup dockerd >'$DEV/dockerd.log' 2>&1 & echo \$! >'$DEV/dockerd.pid'"
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && return
    sleep 0.5
  done
  tail -20 "$DEV/dockerd.log" >&2 || true
  die "dockerd did not come up"
}

build() {
  if [ "$PROFILE" = release ]; then
    say "building (cargo build --release --bins)"
    (cd "$ROOT" && cargo build --release --bins --quiet)
  else
    say "building (cargo build --bins --no-default-features: debug, without jemalloc)"
    (cd "$ROOT" && cargo build --bins --no-default-features --quiet)
  fi
  "$ROOT/deploy/demo-image/build.sh" "$IMAGE" >&2
}

node_ok() {
  command -v node >/dev/null && node -e '
    const [a, b] = process.versions.node.split(".").map(Number);
    process.exit((a === 20 && b >= 19) || (a === 22 && b >= 12) || a > 22 ? 0 : 1)'
}

build_dashboard() {
  if ! node_ok; then
    say "Node.js 20.19+ not found: the dashboard is not built (the API works without it)"
    return
  fi
  local d="$ROOT/dashboard"
  if [ ! -f "$d/node_modules/.package-lock.json" ] || [ "$d/package-lock.json" -nt "$d/node_modules/.package-lock.json" ]; then
    say "installing the dashboard's packages (npm ci)"
    (cd "$d" && npm ci --no-audit --no-fund --loglevel=error)
  fi
  if [ -f "$d/dist/index.html" ] &&
    [ -z "$(find "$d/src" "$d/public" "$d/index.html" "$d/package-lock.json" "$d/svelte.config.js" "$d"/vite.config.* -newer "$d/dist/index.html" -print -quit 2>/dev/null)" ]; then
    return
  fi
  say "building the dashboard (vite build)"
  (cd "$d" && npx vite build --logLevel warn)
}

admin_key() {
  if [ ! -s "$DEV/admin.key" ]; then
    python3 -c 'import secrets; print("wpk_" + secrets.token_hex(6) + "_" + secrets.token_hex(32))' >"$DEV/admin.key"
    chmod 600 "$DEV/admin.key"
  fi
  cat "$DEV/admin.key"
}

running() { [ -f "$DEV/$1.pid" ] && alive "$(cat "$DEV/$1.pid")"; }

spawn() { # name, command...
  local name=$1; shift
  if running "$name"; then
    # The pid file is as old as the process: a binary built since is restarted.
    if [ "$1" -nt "$DEV/$name.pid" ]; then
      say "$name runs an older build: restarting it"
      stop_pid "$name"
    else
      say "$name already running"
      return
    fi
  fi
  nohup "$@" >"$DEV/$name.log" 2>&1 &
  echo $! >"$DEV/$name.pid"
}

wait_http() { # url, what
  for _ in $(seq 1 100); do
    curl -fsS -o /dev/null -H "Authorization: Bearer ${TOKEN:-}" "$1" 2>/dev/null && return
    sleep 0.2
  done
  die "$2 did not answer at $1 (see .dev/*.log)"
}

up() {
  install_prereqs
  # Sessions survive a dockerd restart only with live restore: turn it on (merged into any
  # daemon.json there is) before dockerd starts, or reload a dockerd that runs already.
  as_root bash -c ". '$ROOT/deploy/lib/docker-live-restore.sh' && enable_live_restore" >&2
  start_dockerd
  as_root bash -c ". '$ROOT/deploy/lib/docker-live-restore.sh' && reload_live_restore" >&2
  build
  build_dashboard
  mkdir -p "$DEV"
  local token
  token=$(admin_key)
  TOKEN=$token
  local member_flags=(--auth --admin-key-file "$DEV/admin.key")
  # Allocation answers carry the gateway's URLs: by path, and by host under localhost (which
  # browsers and curl resolve to 127.0.0.1 by themselves).
  member_flags+=(--gateway-url "http://127.0.0.1:$GATEWAY_PORT" --gateway-domain localhost)
  [ -f "$ROOT/dashboard/dist/index.html" ] && member_flags+=(--dashboard-dir "$ROOT/dashboard/dist")
  # NATS as in production: a user per member and per agent, each allowed only its own
  # subjects (deploy/nats-config.sh); nothing without credentials gets in.
  local natsdir="$DEV/nats"
  "$ROOT/deploy/nats-config.sh" --dir "$natsdir" --listen "127.0.0.1:$NATS_PORT" \
    --agent "$NODE_ID" --member 1 --member 2 --member 3 2>/dev/null
  local nats_url="nats://127.0.0.1:$NATS_PORT"
  if [ "$NATS_CLUSTER" = 1 ]; then
    start_nats_cluster "$natsdir"
    nats_url="nats://127.0.0.1:$NATS_PORT,nats://127.0.0.1:$((NATS_PORT + 1)),nats://127.0.0.1:$((NATS_PORT + 2))"
  elif ! running nats && (exec 3<>"/dev/tcp/127.0.0.1/$NATS_PORT") 2>/dev/null; then
    say "a NATS server already listens on 127.0.0.1:$NATS_PORT; using it (it must take the users in $natsdir/nats-server.conf)"
  else
    say "starting nats-server on 127.0.0.1:$NATS_PORT (a user per member and agent)"
    spawn nats nats-server -c "$natsdir/nats-server.conf"
  fi
  say "starting 3 control-plane members (APIs on 127.0.0.1:$API_PORT-$((API_PORT + 2)))"
  local m role
  for m in 1 2 3; do
    role=--join
    [ "$m" = 1 ] && role=--bootstrap
    # Each with its own NATS user, from the environment (never on a command line).
    (
      set -a
      . "$natsdir/members/$m.env"
      set +a
      spawn "cp$m" "$BIN/warmpool-control-plane" --id "$m" "$role" --data-dir "$DEV/cp$m" \
        --api-addr "127.0.0.1:$((API_PORT + m - 1))" --nats-url "$nats_url" \
        --workspace-store "file://$DEV/workspaces" "${member_flags[@]}"
    )
  done
  say "starting an agent (node $NODE_ID, containers on $PREFIX)"
  (
    export WARMPOOL_NATS_USER="$NODE_ID"
    WARMPOOL_NATS_PASSWORD=$(head -n 1 "$natsdir/credentials/$NODE_ID.password")
    export WARMPOOL_NATS_PASSWORD
    spawn agent "$BIN/warmpool-agent" --node-id "$NODE_ID" --ipv6-prefix "$PREFIX" \
      --nats-url "$nats_url" --workspace-store "file://$DEV/workspaces"
  )
  wait_http "http://127.0.0.1:$API_PORT/v1/whoami" "the control plane"

  local urls="http://127.0.0.1:$API_PORT,http://127.0.0.1:$((API_PORT + 1)),http://127.0.0.1:$((API_PORT + 2))"
  say "starting the gateway on 127.0.0.1:$GATEWAY_PORT (metrics on :$((GATEWAY_PORT + 1)))"
  spawn gateway "$BIN/warmpool-gateway" --listen "127.0.0.1:$GATEWAY_PORT" --api-url "$urls" \
    --api-key-file "$DEV/admin.key" --domain localhost --metrics-addr "127.0.0.1:$((GATEWAY_PORT + 1))"
  cat >"$DEV/env" <<ENV
export POOLCTL_URL=$urls
export POOLCTL_TOKEN=$token
export PATH="$BIN:\$PATH"
ENV
  chmod 600 "$DEV/env"
  local poolctl="$BIN/poolctl"
  export POOLCTL_URL=$urls POOLCTL_TOKEN=$token
  say "waiting for 3 voters"
  for _ in $(seq 1 100); do
    [ "$("$poolctl" --output json cluster status 2>/dev/null | python3 -c 'import json,sys; print(sum(m["role"]=="voter" for m in json.load(sys.stdin)["members"]))' 2>/dev/null)" = 3 ] && break
    sleep 0.2
  done
  if ! "$poolctl" pool show demo >/dev/null 2>&1; then
    say "creating pool demo (min_warm 3, image $IMAGE)"
    "$poolctl" pool create demo --image "$IMAGE" --min-warm 3 --health-path /healthz >/dev/null
  fi
  say "waiting for 3 warm containers"
  local warm=0
  for _ in $(seq 1 240); do
    warm=$("$poolctl" --output json status | python3 -c 'import json,sys; s=json.load(sys.stdin); print(next((p["counts"]["warm"] for p in s["pools"] if p["name"]=="demo"),0))' 2>/dev/null || echo 0)
    [ "$warm" -ge 3 ] && break
    sleep 0.5
  done
  [ "$warm" -ge 3 ] || die "pool demo did not become warm (see .dev/agent.log and .dev/cp1.log)"
  "$poolctl" status
  cat <<MSG

Warmpool is up: pool "demo" has $warm warm containers.

  source .dev/env                  # POOLCTL_URL, POOLCTL_TOKEN (admin key) and poolctl on PATH
  http://127.0.0.1:$API_PORT/           # the dashboard; sign in with the key in .dev/admin.key
  poolctl status                   # pools, nodes, counts
  poolctl alloc demo               # a warm container in milliseconds; prints its URL
  curl -g 'http://[<ipv6>]:8080/'  # the container answers on its own IPv6 address
  poolctl --output json alloc demo # also its access token and gateway URLs, then:
  curl -H "X-Warmpool-Token: <token>" http://127.0.0.1:$GATEWAY_PORT/s/<allocation-id>/8080/
                                   # or open <url>?token=<token> in a browser (sets a cookie)
  poolctl release <allocation-id>  # destroyed and replaced
  poolctl events --follow          # the lifecycle, live
  deploy/dev.sh down               # stop everything

MSG
}

# Three nats-servers (pid files nats, nats2, nats3), each with the users and permissions of
# DIR/nats-server.conf, its own client port and a route to the other two.
start_nats_cluster() { # dir
  local dir=$1 i routes="" conf
  for i in 0 1 2; do routes+="${routes:+, }nats://127.0.0.1:$((NATS_ROUTE_PORT + i))"; done
  say "starting a NATS cluster: 3 servers on 127.0.0.1:$NATS_PORT-$((NATS_PORT + 2)), routes on :$NATS_ROUTE_PORT-$((NATS_ROUTE_PORT + 2))"
  for i in 0 1 2; do
    conf="$dir/nats-cluster-$i.conf"
    {
      grep -v '^listen:' "$dir/nats-server.conf"
      echo "listen: \"127.0.0.1:$((NATS_PORT + i))\""
      echo "server_name: \"warmpool-dev-nats-$((i + 1))\""
      echo "cluster {"
      echo "  name: \"warmpool-dev\""
      echo "  listen: \"127.0.0.1:$((NATS_ROUTE_PORT + i))\""
      echo "  routes: [$routes]"
      echo "}"
    } >"$conf"
    chmod 600 "$conf"
    local name=nats
    [ "$i" = 0 ] || name="nats$((i + 1))"
    spawn "$name" nats-server -c "$conf"
  done
}

# Stops the process recorded in .dev/NAME.pid: SIGTERM, then SIGKILL after 5 s; returns once
# it has exited (or says which pid would not go).
stop_pid() { # name
  local name=$1 pid
  if running "$name"; then
    pid=$(cat "$DEV/$name.pid")
    kill "$pid" 2>/dev/null || true
    if ! wait_exit "$pid" 5; then
      kill -9 "$pid" 2>/dev/null || true
      wait_exit "$pid" 5 || { printf 'error: %s (pid %s) did not exit even after SIGKILL\n' "$name" "$pid" >&2; return 1; }
    fi
  fi
  rm -f "$DEV/$name.pid"
}

down() {
  local failed=0
  say "stopping gateway, agent, control plane and nats-server"
  stop_pid gateway || failed=1
  stop_pid agent || failed=1
  for m in cp1 cp2 cp3; do stop_pid "$m" || failed=1; done
  for n in nats nats2 nats3; do stop_pid "$n" || failed=1; done
  if docker info >/dev/null 2>&1; then
    local ids
    ids=$(docker ps -aq --filter "label=io.warmpool.node=$NODE_ID")
    if [ -n "$ids" ]; then
      say "removing $(echo "$ids" | wc -l) containers"
      # 16 at a time: `docker rm -f` of hundreds at once has hung dockerd 20.10 here.
      echo "$ids" | xargs -n 16 docker rm -f >/dev/null
    fi
    docker network rm "warmpool-$NODE_ID" >/dev/null 2>&1 || true
  fi
  # The agent's isolation rules go with its network (the agent leaves them to close what may
  # still run while it is away).
  as_root "$ROOT/deploy/lib/remove-node-table.sh" "$NODE_ID"
  if [ -f "$DEV/dockerd.pid" ]; then
    local dpid cpid others shims
    dpid=$(cat "$DEV/dockerd.pid")
    cpid=$(pid_in "$CONTAINERD_PIDFILE")
    others=$(docker ps -q 2>/dev/null || true)
    shims=$(pgrep -f 'containerd-shim.*-namespace moby' || true)
    say "stopping the dockerd this script started (pid $dpid) and waiting for it to exit"
    as_root kill "$dpid" 2>/dev/null || true
    # dockerd stops its containerd and, without live restore, every container first.
    if ! wait_exit "$dpid" 60; then
      printf 'error: dockerd (pid %s) is still running 60 s after SIGTERM; see .dev/dockerd.log\n' "$dpid" >&2
      failed=1
    else
      rm -f "$DEV/dockerd.pid"
    fi
    if alive "$cpid" && ! wait_exit "$cpid" 30; then
      printf 'error: containerd (pid %s) is still running 30 s after dockerd exited\n' "$cpid" >&2
      failed=1
    fi
    # With no other containers, every shim goes with Warmpool's; with others left running
    # (live restore keeps them), theirs stay, as they should.
    if [ -z "$others" ]; then
      local s
      for s in $shims; do
        wait_exit "$s" 15 || { printf 'error: containerd shim (pid %s) did not exit\n' "$s" >&2; failed=1; }
      done
    fi
  fi
  rm -rf "$DEV"/cp1 "$DEV"/cp2 "$DEV"/cp3 "$DEV/env" "$DEV/admin.key"
  [ "$failed" -eq 0 ] || die "some processes did not stop (see above)"
}

status() {
  for n in nats nats2 nats3 cp1 cp2 cp3 agent gateway; do
    if running "$n"; then echo "$n: running (pid $(cat "$DEV/$n.pid"))"; fi
  done
}

# The agents' nftables tables on this host (their names), one a line.
isolation_tables() {
  command -v nft >/dev/null || return 0
  as_root nft list tables inet 2>/dev/null | awk '$3 ~ /^warmpool_/ {print $3}' | sort
}

warmpool_networks() {
  docker network ls --format '{{.Name}}' 2>/dev/null | grep '^warmpool-' | sort || true
}

# Stages run in the background by `test`: `bg_start NAME COMMAND...` runs one with its output
# in a file of its own; `bg_finish NAME` waits for it, prints that output and returns its
# status; `bg_stop_all` stops those still running (on exit). `after FILE COMMAND...` runs
# COMMAND once FILE exists, or gives up once this script is gone (killed before it made FILE,
# where its EXIT trap could not stop the waiting).
declare -A BG_PID=() BG_LOG=()
bg_start() {
  local name=$1
  shift
  BG_LOG[$name]=$(mktemp "${TMPDIR:-/tmp}/warmpool-$name.XXXXXX")
  "$@" >"${BG_LOG[$name]}" 2>&1 &
  BG_PID[$name]=$!
}
bg_finish() {
  local name=$1 rc=0
  wait "${BG_PID[$name]}" || rc=$?
  unset "BG_PID[$name]"
  cat "${BG_LOG[$name]}"
  rm -f "${BG_LOG[$name]}"
  return "$rc"
}
bg_stop_all() {
  local pid
  for pid in "${BG_PID[@]}"; do kill "$pid" 2>/dev/null || true; done
}
after() {
  local file=$1
  shift
  while [ ! -e "$file" ]; do
    kill -0 "$$" 2>/dev/null || exit 1
    sleep 0.5
  done
  exec "$@"
}

run_tests() {
  # The tests run the debug binaries, whatever WARMPOOL_RELEASE says.
  PROFILE=debug
  local t=$SECONDS times=()
  # `lap NAME`: NAME took the seconds since the last lap (the summary at the end).
  lap() { times+=("$1 $((SECONDS - t)) s"); t=$SECONDS; }
  local marker failed=()
  trap bg_stop_all EXIT
  install_prereqs
  start_dockerd
  lap "installing and starting dockerd"
  # The dashboard's npm packages, its build and its unit tests (Vitest: no cluster, no browser)
  # beside the cargo build, which keeps both cores busy for minutes: a few seconds of CPU less
  # on the path than after it. Its browser tests come later.
  bg_start dashboard_unit nice -n 10 "$ROOT/deploy/dashboard-test.sh" --unit
  build
  say "the dashboard's npm packages, build and unit tests (beside the build):"
  bg_finish dashboard_unit || failed+=("the dashboard's unit tests")
  lap "building"
  local tables_before networks_before leaked
  # Networks of the tests' agents (`warmpool-node-<8 hex>`) an earlier run left behind: dockerd
  # can keep a stale endpoint on one after its containers are gone ("has active endpoints"),
  # which only a restart of dockerd clears; they would take IPv4 pools from this run.
  local stale
  stale=$(warmpool_networks | grep -E '^warmpool-node-[0-9a-f]{8}$' || true)
  if [ -n "$stale" ]; then
    say "removing Docker networks an earlier run of the tests left behind: $(echo $stale)"
    for net in $stale; do docker network rm "$net" >/dev/null || true; done
  fi
  tables_before=$(isolation_tables)
  networks_before=$(warmpool_networks)
  say "running the tests (every cargo test binary, a few at once: deploy/test-cargo.sh)"
  cd "$ROOT"
  # The API fuzzer runs for a fixed time on one core (schemathesis is Python: one interpreter),
  # with its own nats-server and member and no Docker. It starts once the test binaries that
  # run together (and keep both cores busy) are done, at the lowest priority: the stages after
  # them leave about half the machine idle (the tests run alone wait on containers, the rest on
  # a browser, a cluster, dockerd stopping). Nothing else runs beside the tests run alone: with
  # the dashboard's npm ci and build there too (disk, which nice does not govern), the burst
  # test's replay came out 5.1% off the live run.
  marker=$(mktemp -u "${TMPDIR:-/tmp}/warmpool-together-done.XXXXXX")
  bg_start fuzz after "$marker" nice -n 19 "$ROOT/deploy/fuzz-api.sh"
  say "the API fuzzer (schemathesis, auth on) starts beside the tests run alone"
  WARMPOOL_TOGETHER_DONE=$marker "$ROOT/deploy/test-cargo.sh" || failed+=("the cargo tests")
  lap "the cargo tests"
  # test-cargo.sh makes it, also when it fails; not when it is killed, and the stages waiting
  # for it would then wait for ever.
  touch "$marker"
  rm -f "$marker"
  # Each test's agents remove their Docker network when the test ends, failed or not; one left
  # behind is named (the stages after this start clusters of their own, and the down/up test
  # stops dockerd), then removed: dockerd gives every bridge network an IPv4 pool of its own,
  # 31 by default, and a machine that runs the suite again and again would run out.
  leaked=$(comm -13 <(echo "$networks_before") <(warmpool_networks))
  if [ -n "$leaked" ]; then
    say "warning: the cargo tests left Docker networks behind: $(echo $leaked) (removing them; one that dockerd says has active endpoints, with no container left, goes at the next run, once dockerd has restarted)"
    for net in $leaked; do docker network rm "$net" >/dev/null || true; done
  fi
  # The SDK's tests and the dashboard's each start their own cluster and mostly wait on it (and
  # on a browser): they run side by side.
  bg_start sdk env WARMPOOL_SKIP_CARGO_BUILD=1 "$ROOT/deploy/sdk-test.sh"
  say "running the dashboard's browser tests (Chromium against a live cluster), and beside them the Python SDK's (pytest against a live cluster)"
  WARMPOOL_SKIP_CARGO_BUILD=1 "$ROOT/deploy/dashboard-test.sh" --browser || failed+=("the dashboard's tests")
  say "the Python SDK's tests:"
  bg_finish sdk || failed+=("the SDK's tests")
  lap "the dashboard's and the SDK's tests"
  say "down then up at once, three times (the dev cluster; stops the dockerd dev.sh started)"
  "$ROOT/deploy/updown-test.sh" || failed+=("down then up")
  lap "down then up"
  say "the API fuzzer (schemathesis, auth on):"
  bg_finish fuzz || failed+=("the API fuzzer")
  lap "waiting for the fuzzer after that"
  trap - EXIT
  local total=0 lapped
  for lapped in "${times[@]}"; do
    lapped=${lapped% s}
    total=$((total + ${lapped##* }))
  done
  printf -v lapped '%s; ' "${times[@]}"
  say "stages: ${lapped%; } ($total s in all)"
  if [ "${#failed[@]}" -gt 0 ]; then
    local list
    printf -v list '%s, ' "${failed[@]}"
    die "failed: ${list%, }"
  fi
  # A test's agent leaves its table when killed; its harness must delete it. Left behind, the
  # tables pile up run after run and every packet on the host walks their chains.
  leaked=$(comm -13 <(echo "$tables_before") <(isolation_tables))
  [ -z "$leaked" ] || die "the tests left agents' nftables tables behind: $(echo $leaked)"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  test) run_tests ;;
  *) echo "usage: deploy/dev.sh up [--release] [--nats-cluster]|down|status|test" >&2; exit 2 ;;
esac
