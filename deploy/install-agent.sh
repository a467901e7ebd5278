#!/usr/bin/env bash
# Installs the Warmpool node agent on this Docker host: the binary, its configuration and a
# systemd unit; starts it when systemd runs here. Idempotent: run it again with other values
# to change them (the agent is restarted only when something changed).
#
#   deploy/install-agent.sh --nats-url URL --ipv6-prefix PREFIX [options]
#
# Required:
#   --nats-url URL[,URL]    NATS server(s): nats://host:port or tls://host:port
#   --ipv6-prefix PREFIX    this host's container /64, e.g. fd36:2::/64; distinct per host
# Options:
#   --node-id ID            default: the hostname up to its first dot, with characters other
#                           than letters, digits, '-' and '_' turned into '-'
#   --nats-user USER        NATS credentials (both or neither; see docs/multi-host.md);
#   --nats-password PASS    or --nats-password-file FILE (its first line)
#   --nats-credentials DIR  instead of the two above: the directory deploy/nats-config.sh
#                           wrote; the user is the node id, its password DIR/credentials/<id>.password
#   --label KEY=VALUE       node label matched by pool constraints (repeatable)
#   --docker-host ADDR      default unix:///var/run/docker.sock
#   --network NAME          Docker network for the containers; default warmpool-<node-id>
#   --heartbeat-ms N        default 1000
#   --metrics-addr ADDR     serve Prometheus metrics on ADDR, e.g. [::]:9101 (the port
#                           deploy/prometheus/prometheus.yml scrapes); default: not served
#   --ingress-from PREFIX   addresses that may open connections to containers' service ports
#                           besides this host (repeatable), e.g. the clients' or proxies'
#                           network; default: only this host
#   --fleet-prefix PREFIX   the fleet's prefixes, closed to every container (repeatable);
#                           default: fc00::/7 for a unique-local /64, else its /48
#   --no-isolation          no nftables rules (containers reach each other and the fleet);
#                           only for hosts without nftables
#   --address ADDR          this host's IPv6 address that other hosts route the /64 via;
#                           default: the source address towards NATS (or the default route)
#   --binary PATH           the warmpool-agent to install; default: the workspace's
#                           target/release, else target/debug ($CARGO_TARGET_DIR honoured)
#   --root DIR              install under DIR instead of / (staging, tests); files keep their
#                           final paths inside DIR and systemctl is never run
#   --no-start              write the files only; do not run systemctl
#   --userns-remap          also set "userns-remap": "default" in daemon.json: a container's root
#                           is then an unprivileged user on the host (dockerd must be restarted
#                           for it, and sees none of the images and containers it had before:
#                           import or pull the pools' images again)
#   --no-live-restore       leave Docker's daemon.json alone (by default "live-restore": true is
#                           merged into it, keeping every other setting, so that containers
#                           and their sessions survive a dockerd restart)
#   -h, --help              this text
#
# Writes ROOT/usr/local/bin/warmpool-agent, ROOT/etc/warmpool/agent.env (mode 600: it may hold
# the NATS password) and ROOT/etc/systemd/system/warmpool-agent.service (deploy/systemd/).
# Prints the route every other host (and every client) needs to reach this host's /64.
# Exit status: 0 done, 1 failed, 2 bad arguments.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
WORKSPACE=$(cd "$SCRIPT_DIR/.." && pwd)
UNIT_TEMPLATE="$SCRIPT_DIR/systemd/warmpool-agent.service"
BIN_PATH=/usr/local/bin/warmpool-agent
ENV_PATH=/etc/warmpool/agent.env
UNIT_PATH=/etc/systemd/system/warmpool-agent.service
DAEMON_JSON=/etc/docker/daemon.json
# shellcheck source=deploy/lib/docker-live-restore.sh
. "$SCRIPT_DIR/lib/docker-live-restore.sh"

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
die() { printf 'install-agent: error: %s\n' "$*" >&2; exit 1; }
bad() { printf 'install-agent: %s\n' "$*" >&2; printf 'run %s --help for usage\n' "$0" >&2; exit 2; }
say() { printf '%s\n' "$*"; }

ROOT=/
NATS_URL= PREFIX= NODE_ID= NATS_USER= NATS_PASSWORD= PASSWORD_FILE= CREDENTIALS_DIR=
DOCKER_HOST_ADDR=unix:///var/run/docker.sock NETWORK= HEARTBEAT_MS= METRICS_ADDR= ADDRESS= BINARY= NO_START=0 LIVE_RESTORE=1 USERNS_REMAP=0
LABELS=()
INGRESS=() FLEET=() NO_ISOLATION=0

need_value() { [ $# -ge 2 ] && [ -n "$2" ] || bad "$1 needs a value"; }
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --nats-url) need_value "$@"; NATS_URL=$2; shift 2 ;;
    --ipv6-prefix) need_value "$@"; PREFIX=$2; shift 2 ;;
    --node-id) need_value "$@"; NODE_ID=$2; shift 2 ;;
    --nats-user) need_value "$@"; NATS_USER=$2; shift 2 ;;
    --nats-password) need_value "$@"; NATS_PASSWORD=$2; shift 2 ;;
    --nats-password-file) need_value "$@"; PASSWORD_FILE=$2; shift 2 ;;
    --nats-credentials) need_value "$@"; CREDENTIALS_DIR=$2; shift 2 ;;
    --label) need_value "$@"; LABELS+=("$2"); shift 2 ;;
    --docker-host) need_value "$@"; DOCKER_HOST_ADDR=$2; shift 2 ;;
    --network) need_value "$@"; NETWORK=$2; shift 2 ;;
    --heartbeat-ms) need_value "$@"; HEARTBEAT_MS=$2; shift 2 ;;
    --metrics-addr) need_value "$@"; METRICS_ADDR=$2; shift 2 ;;
    --ingress-from) need_value "$@"; INGRESS+=("$2"); shift 2 ;;
    --fleet-prefix) need_value "$@"; FLEET+=("$2"); shift 2 ;;
    --no-isolation) NO_ISOLATION=1; shift ;;
    --address) need_value "$@"; ADDRESS=$2; shift 2 ;;
    --binary) need_value "$@"; BINARY=$2; shift 2 ;;
    --root) need_value "$@"; ROOT=$2; shift 2 ;;
    --no-start) NO_START=1; shift ;;
    --no-live-restore) LIVE_RESTORE=0; shift ;;
    --userns-remap) USERNS_REMAP=1; shift ;;
    --*=*) bad "write '${1%%=*} ${1#*=}', not '$1'" ;;
    *) bad "unknown argument '$1'" ;;
  esac
done

# ---- validation: everything is checked before anything is written ----

[ -n "$NATS_URL" ] || bad "--nats-url is required (e.g. nats://10.0.0.1:4222)"
[ -n "$PREFIX" ] || bad "--ipv6-prefix is required (this host's container /64, e.g. fd36:2::/64)"

IFS=, read -ra urls <<<"$NATS_URL"
[ ${#urls[@]} -gt 0 ] || bad "--nats-url '$NATS_URL': no URL"
for u in "${urls[@]}"; do
  u=${u// /}
  [[ $u =~ ^(nats|tls)://[^/[:space:]]+$ ]] || bad "--nats-url '$u': expected nats://HOST:PORT or tls://HOST:PORT"
done

# Splits an IPv6 address into its 8 groups (in GROUPS), or fails.
split_ipv6() {
  local addr=$1 head tail n i
  local -a h=() t=()
  [[ $addr =~ ^[0-9a-fA-F:]+$ ]] || return 1
  GROUPS_=()
  if [[ $addr == *::* ]]; then
    [[ $addr == *::*::* ]] && return 1
    head=${addr%%::*} tail=${addr#*::}
    [ -n "$head" ] && IFS=: read -ra h <<<"$head"
    [ -n "$tail" ] && IFS=: read -ra t <<<"$tail"
    n=$((8 - ${#h[@]} - ${#t[@]}))
    [ $n -ge 1 ] || return 1
    GROUPS_=("${h[@]}")
    for ((i = 0; i < n; i++)); do GROUPS_+=(0); done
    GROUPS_+=("${t[@]}")
  else
    IFS=: read -ra GROUPS_ <<<"$addr"
  fi
  [ ${#GROUPS_[@]} -eq 8 ] || return 1
  for i in "${GROUPS_[@]}"; do [[ $i =~ ^[0-9a-fA-F]{1,4}$ ]] || return 1; done
}

check_prefix() {
  local p=$1 addr len g
  [[ $p == */* ]] || bad "--ipv6-prefix '$p': expected ADDRESS/64, e.g. fd36:2::/64"
  addr=${p%/*} len=${p#*/}
  [ "$len" = 64 ] || bad "--ipv6-prefix '$p': the prefix length must be 64"
  split_ipv6 "$addr" || bad "--ipv6-prefix '$p': '$addr' is not an IPv6 address"
  for g in "${GROUPS_[@]:4}"; do
    [ $((16#$g)) -eq 0 ] || bad "--ipv6-prefix '$p': host bits are set (the low 64 bits must be zero)"
  done
  [ $((16#${GROUPS_[0]})) -ne 0 ] || bad "--ipv6-prefix '$p': not a unicast network"
  [[ ${GROUPS_[0],,} != ff* || ${#GROUPS_[0]} -lt 4 ]] || bad "--ipv6-prefix '$p': multicast"
}
check_prefix "$PREFIX"

if [ -n "$NODE_ID" ]; then
  [[ $NODE_ID =~ ^[A-Za-z0-9_-]{1,64}$ ]] || bad "--node-id '$NODE_ID': 1 to 64 letters, digits, '-' or '_'"
else
  host=$(hostname 2>/dev/null || cat /proc/sys/kernel/hostname)
  NODE_ID=${host%%.*}
  NODE_ID=$(printf '%s' "$NODE_ID" | tr -c 'A-Za-z0-9_-' '-' | cut -c1-64)
  [ -n "$NODE_ID" ] || bad "--node-id not given and the hostname '$host' gives no usable id"
fi

if [ -n "$CREDENTIALS_DIR" ]; then
  [ -z "$NATS_USER$NATS_PASSWORD$PASSWORD_FILE" ] || bad "give --nats-credentials or --nats-user/--nats-password(-file), not both"
  NATS_USER=$NODE_ID
  PASSWORD_FILE=$CREDENTIALS_DIR/credentials/$NODE_ID.password
  [ -r "$PASSWORD_FILE" ] || bad "--nats-credentials '$CREDENTIALS_DIR': no password for node $NODE_ID ($PASSWORD_FILE); run deploy/nats-config.sh --dir $CREDENTIALS_DIR --agent $NODE_ID"
fi
if [ -n "$PASSWORD_FILE" ]; then
  [ -z "$NATS_PASSWORD" ] || bad "give --nats-password or --nats-password-file, not both"
  [ -r "$PASSWORD_FILE" ] || bad "--nats-password-file '$PASSWORD_FILE': cannot read it"
  NATS_PASSWORD=$(head -n1 "$PASSWORD_FILE")
fi
if { [ -n "$NATS_USER" ] && [ -z "$NATS_PASSWORD" ]; } || { [ -z "$NATS_USER" ] && [ -n "$NATS_PASSWORD" ]; }; then
  bad "--nats-user and --nats-password must be given together"
fi
for v in "$NATS_USER" "$NATS_PASSWORD"; do
  [[ $v != *$'\n'* ]] || bad "NATS credentials cannot contain a newline"
done

declare -A seen=()
for l in "${LABELS[@]}"; do
  [[ $l =~ ^[^=,[:space:]]+=[^,]*$ ]] || bad "--label '$l': expected KEY=VALUE (no commas)"
  k=${l%%=*}
  [ -z "${seen[$k]:-}" ] || bad "--label '$l': key '$k' is given twice"
  seen[$k]=1
done

[[ $DOCKER_HOST_ADDR =~ ^unix:///.+ ]] || bad "--docker-host '$DOCKER_HOST_ADDR': only unix:///path/to/docker.sock is supported"
if [ -n "$NETWORK" ]; then
  [[ $NETWORK =~ ^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$ ]] || bad "--network '$NETWORK': letters, digits, '_', '.' or '-', starting with a letter or digit"
fi
if [ -n "$HEARTBEAT_MS" ]; then
  [[ $HEARTBEAT_MS =~ ^[0-9]{1,5}$ ]] && [ "$HEARTBEAT_MS" -ge 50 ] && [ "$HEARTBEAT_MS" -le 60000 ] \
    || bad "--heartbeat-ms '$HEARTBEAT_MS': 50..60000"
fi
if [ -n "$METRICS_ADDR" ]; then
  # host:port or [ipv6]:port, as the agent parses a socket address.
  [[ $METRICS_ADDR =~ ^(\[[0-9A-Fa-f:.]+\]|[0-9]{1,3}(\.[0-9]{1,3}){3}):[0-9]{1,5}$ ]] \
    || bad "--metrics-addr '$METRICS_ADDR': an address and port, e.g. [::]:9101 or 0.0.0.0:9101"
fi
if [ -n "$ADDRESS" ]; then
  split_ipv6 "$ADDRESS" || bad "--address '$ADDRESS': not an IPv6 address"
fi

if [ -z "$BINARY" ]; then
  target=${CARGO_TARGET_DIR:-$WORKSPACE/target}
  for b in "$target/release/warmpool-agent" "$target/debug/warmpool-agent"; do
    if [ -x "$b" ]; then BINARY=$b; break; fi
  done
  [ -n "$BINARY" ] || die "no warmpool-agent under $target/{release,debug}: build it (cargo build --release --bin warmpool-agent) or pass --binary PATH"
fi
[ -f "$BINARY" ] && [ -x "$BINARY" ] || die "--binary '$BINARY' is not an executable file"
[ -f "$UNIT_TEMPLATE" ] || die "unit template $UNIT_TEMPLATE is missing: run this script from a Warmpool checkout or release (deploy/ with deploy/systemd/)"

# The agent's network isolation needs nft (nftables); install it on a real host, never under a
# staging --root.
if [ "$NO_ISOLATION" -eq 0 ] && [ "$ROOT" = / ] && ! command -v nft >/dev/null; then
  command -v apt-get >/dev/null || die "nft is missing: install nftables, or pass --no-isolation"
  say "installing nftables (the agent's network isolation rules need nft)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nftables >/dev/null \
    || die "installing nftables failed: install it by hand, or pass --no-isolation"
fi

# ---- writing ----

ROOT=${ROOT%/}
CHANGED=0
dest() { printf '%s%s' "$ROOT" "$1"; }

# install_file SRC DEST MODE: puts SRC at DEST atomically unless DEST already has its bytes.
install_file() {
  local src=$1 dst=$2 mode=$3 tmp
  mkdir -p "$(dirname "$dst")"
  if [ -f "$dst" ] && cmp -s "$src" "$dst"; then
    chmod "$mode" "$dst"
    say "unchanged: $dst"
    return
  fi
  # A temporary file beside the target and a rename: a running agent's binary is replaced,
  # never overwritten in place ("text file busy"), and no reader sees half a file.
  tmp=$(mktemp "$dst.XXXXXX")
  cat "$src" >"$tmp"
  chmod "$mode" "$tmp"
  mv -f "$tmp" "$dst"
  CHANGED=1
  say "wrote: $dst"
}

# A value for an environment file read by both systemd and sh: double quotes, with \ " ` $
# escaped by a backslash (both read these escapes the same way).
quote() {
  local v=$1
  v=${v//\\/\\\\}
  v=${v//\"/\\\"}
  v=${v//\`/\\\`}
  v=${v//\$/\\\$}
  printf '"%s"' "$v"
}

umask 022
[ -n "$ROOT" ] || [ "$(id -u)" -eq 0 ] || die "installing into / needs root (or pass --root DIR to stage the files)"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

{
  echo "# Warmpool node agent configuration, written by deploy/install-agent.sh."
  echo "# Read by warmpool-agent.service (EnvironmentFile=); every WARMPOOL_* variable is a flag"
  echo "# of warmpool-agent (see warmpool-agent --help). Run the script again to change it."
  echo "WARMPOOL_NODE_ID=$(quote "$NODE_ID")"
  echo "WARMPOOL_NATS_URL=$(quote "$NATS_URL")"
  if [ -n "$NATS_USER" ]; then
    echo "WARMPOOL_NATS_USER=$(quote "$NATS_USER")"
    echo "WARMPOOL_NATS_PASSWORD=$(quote "$NATS_PASSWORD")"
  fi
  echo "WARMPOOL_IPV6_PREFIX=$(quote "$PREFIX")"
  echo "WARMPOOL_DOCKER_HOST=$(quote "$DOCKER_HOST_ADDR")"
  if [ ${#LABELS[@]} -gt 0 ]; then
    joined=$(IFS=,; printf '%s' "${LABELS[*]}")
    echo "WARMPOOL_LABELS=$(quote "$joined")"
  fi
  [ -z "$NETWORK" ] || echo "WARMPOOL_NETWORK=$(quote "$NETWORK")"
  [ -z "$HEARTBEAT_MS" ] || echo "WARMPOOL_HEARTBEAT_MS=$(quote "$HEARTBEAT_MS")"
  [ -z "$METRICS_ADDR" ] || echo "WARMPOOL_METRICS_ADDR=$(quote "$METRICS_ADDR")"
  if [ ${#INGRESS[@]} -gt 0 ]; then
    echo "WARMPOOL_INGRESS_FROM=$(quote "$(IFS=,; echo "${INGRESS[*]}")")"
  fi
  if [ ${#FLEET[@]} -gt 0 ]; then
    echo "WARMPOOL_FLEET_PREFIXES=$(quote "$(IFS=,; echo "${FLEET[*]}")")"
  fi
  [ "$NO_ISOLATION" -eq 0 ] || echo "WARMPOOL_NO_ISOLATION=true"
} >"$work/agent.env"

# Live restore: containers (and the sessions in them) survive a dockerd restart.
if [ "$LIVE_RESTORE" = 1 ]; then
  enable_live_restore "$(dest $DAEMON_JSON)" || die "could not turn on Docker's live restore (see above); fix $DAEMON_JSON or pass --no-live-restore"
  [ -n "$ROOT" ] || reload_live_restore "$DOCKER_HOST_ADDR"
fi
if [ "$USERNS_REMAP" = 1 ]; then
  set_daemon_option "$(dest $DAEMON_JSON)" userns-remap '"default"' \
    "containers' root is an unprivileged host user once dockerd restarts" \
    || die "could not set userns-remap (see above)"
  say "userns-remap: restart dockerd to apply it (systemctl restart docker); it then starts with no images or containers: import or pull the pools' images again"
fi

install_file "$BINARY" "$(dest $BIN_PATH)" 0755
install_file "$work/agent.env" "$(dest $ENV_PATH)" 0600
install_file "$UNIT_TEMPLATE" "$(dest $UNIT_PATH)" 0644
[ "$CHANGED" = 1 ] || say "nothing changed"

# ---- starting ----

start_by_hand="sh -c 'set -a; . $ENV_PATH; exec $BIN_PATH'"
if [ -n "$ROOT" ]; then
  say "installed under $ROOT (--root): systemctl not run. On the target host, start the agent with"
  say "  systemctl daemon-reload && systemctl enable --now warmpool-agent"
  say "or by hand (as the unit's ExecStart does):"
  say "  $start_by_hand"
elif [ "$NO_START" = 1 ]; then
  say "--no-start: not starting. Start it with: systemctl daemon-reload && systemctl enable --now warmpool-agent"
elif [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
  systemctl daemon-reload
  if [ "$CHANGED" = 1 ] && systemctl is-active --quiet warmpool-agent; then
    systemctl enable warmpool-agent
    systemctl restart warmpool-agent
    say "restarted warmpool-agent with the new files"
  else
    systemctl enable --now warmpool-agent
  fi
  say "warmpool-agent: $(systemctl is-active warmpool-agent || true) (journalctl -u warmpool-agent -f)"
else
  say "systemd is not running on this host: the unit is installed but nothing was started."
  say "Start the agent by hand (as the unit's ExecStart does), e.g. under your supervisor:"
  say "  $start_by_hand"
fi

# ---- routing ----

# The address other hosts reach this one at: the source address of this host's route towards
# the (first) NATS server when that is IPv6, else of its default IPv6 route.
route_src() { ip -6 route get "$1" 2>/dev/null | sed -n 's/.* src \([0-9a-fA-F:]*\).*/\1/p' | head -n1; }
if [ -z "$ADDRESS" ] && command -v ip >/dev/null; then
  first=${urls[0]#*://}
  first=${first##*@}
  case "$first" in
    \[*\]*) nats_host=${first#[}; nats_host=${nats_host%%]*} ;;
    *) nats_host=${first%:*} ;;
  esac
  if ! split_ipv6 "$nats_host" 2>/dev/null; then
    nats_host=$(getent ahostsv6 "$nats_host" 2>/dev/null | awk 'NR==1{print $1}' || true)
  fi
  [ -z "$nats_host" ] || ADDRESS=$(route_src "$nats_host")
  [ -n "$ADDRESS" ] || ADDRESS=$(route_src 2001:db8::1)
fi
say ""
say "Containers on this host get addresses in $PREFIX. Every other host, and every client that"
say "talks to containers directly, needs a route to it via this host:"
if [ -n "$ADDRESS" ]; then
  say "  ip -6 route add $PREFIX via $ADDRESS"
else
  say "  ip -6 route add $PREFIX via <this host's IPv6 address>"
  say "(no IPv6 route found here to tell that address: pass --address)"
fi
if [ -z "$ROOT" ] && [ "$(cat /proc/sys/net/ipv6/conf/all/forwarding 2>/dev/null || echo 1)" != 1 ]; then
  say "IPv6 forwarding is off here; the agent's Docker network needs it: sysctl -w net.ipv6.conf.all.forwarding=1"
fi
