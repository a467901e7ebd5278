#!/usr/bin/env bash
# Generates a nats-server (2.9+) configuration with one user per agent and one for the
# control plane, and their credentials.
#
#   deploy/nats-config.sh --dir DIR --agent NODE [--agent NODE ...] [options]
#
#   --dir DIR            where everything is written (created; mode 700)
#   --agent NODE         a node id to make (or keep) a user for; repeatable
#   --member ID          a control-plane member (Raft id) to make (or keep) its own user for,
#                        <cp-user>-<ID>; repeatable
#   --remove NODE        drop that node's user; repeatable
#   --rotate USER        give USER (a node id, or the control-plane user) a new password
#   --listen HOST:PORT   the server's client address (default 0.0.0.0:4222, or the last run's)
#   --cp-user NAME       the control plane's user (default warmpool-control-plane, or the
#                        last run's)
#
# Writes, all mode 600:
#   DIR/nats-server.conf             run it with: nats-server -c DIR/nats-server.conf
#   DIR/credentials/USER.password    one password per user (the first line)
#   DIR/control-plane.env            WARMPOOL_NATS_USER / WARMPOOL_NATS_PASSWORD for every member
#   DIR/members/ID.env               the same for member ID, with its own user (--member)
#
# Permissions. An agent's user is its node id. It may publish only under
# pool.v1.node.<id>.> (heartbeats, facts) and answer the requests it receives
# (allow_responses: one reply per request, to that request's reply subject, and no general
# _INBOX.> rights), and subscribe only to pool.v1.node.<id>.cmd and .session (logs, exec, files
# and settings asked by any member). A host taken over therefore
# cannot speak for another node, read another node's commands, or listen to replies meant for
# the control plane. The shared control-plane user may use pool.v1.> and _INBOX.>. A member's
# own user (--member ID) may listen only on its own Raft and forward subjects, the join
# subject, agents' heartbeats and facts, and replies to its own requests; it may send Raft RPCs
# and forwards to other members, commands and session requests to agents and events, and answer
# what it is asked;
# it can neither speak for an agent nor listen to another member's Raft traffic.
#
# Running it again keeps existing passwords (agents already installed keep working) and adds
# the new --agent users; users of earlier runs stay until --remove. Install an agent with its
# password file:
#   deploy/install-agent.sh --nats-user NODE --nats-password-file DIR/credentials/NODE.password ...
set -euo pipefail

DIR=
LISTEN=
CP_USER=
AGENTS=()
MEMBERS=()
REMOVE=()
ROTATE=()
bad() { echo "nats-config: $*" >&2; exit 2; }
need_value() { [ $# -ge 2 ] && [ -n "$2" ] || bad "$1 needs a value"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --dir) need_value "$@"; DIR=$2; shift 2 ;;
    --agent) need_value "$@"; AGENTS+=("$2"); shift 2 ;;
    --member) need_value "$@"; [[ $2 =~ ^[1-9][0-9]{0,18}$ ]] || bad "--member '$2': a Raft id (1, 2, 3, ...)"; MEMBERS+=("$2"); shift 2 ;;
    --remove) need_value "$@"; REMOVE+=("$2"); shift 2 ;;
    --rotate) need_value "$@"; ROTATE+=("$2"); shift 2 ;;
    --listen) need_value "$@"; LISTEN=$2; shift 2 ;;
    --cp-user) need_value "$@"; CP_USER=$2; shift 2 ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    *) bad "unknown argument $1 (see --help)" ;;
  esac
done
[ -n "$DIR" ] || bad "--dir is required"
# --listen and --cp-user are remembered from the last run, so a re-run that adds an agent
# changes nothing else.
if [ -f "$DIR/settings" ]; then
  saved_listen=$(sed -n 's/^listen=//p' "$DIR/settings")
  saved_cp=$(sed -n 's/^cp_user=//p' "$DIR/settings")
  LISTEN=${LISTEN:-$saved_listen}
  CP_USER=${CP_USER:-$saved_cp}
fi
LISTEN=${LISTEN:-0.0.0.0:4222}
CP_USER=${CP_USER:-warmpool-control-plane}
id_ok() { [[ $1 =~ ^[A-Za-z0-9_-]{1,64}$ ]]; }
for n in "${AGENTS[@]}" "${REMOVE[@]}"; do
  id_ok "$n" || bad "node id '$n': 1 to 64 letters, digits, '-' or '_'"
  [ "$n" != "$CP_USER" ] || bad "node id '$n' is the control plane's user name (see --cp-user)"
done
id_ok "$CP_USER" || bad "--cp-user '$CP_USER': 1 to 64 letters, digits, '-' or '_'"
[[ $LISTEN =~ ^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}$ ]] || bad "--listen '$LISTEN': expected HOST:PORT"

umask 077
mkdir -p "$DIR/credentials"
chmod 700 "$DIR" "$DIR/credentials"
printf 'listen=%s\ncp_user=%s\n' "$LISTEN" "$CP_USER" >"$DIR/settings"
CRED=$DIR/credentials

new_password() { head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
password_of() { # user -> password, made when missing or rotated
  local f="$CRED/$1.password" r
  for r in "${ROTATE[@]}"; do [ "$r" = "$1" ] && rm -f "$f"; done
  [ -s "$f" ] || new_password >"$f"
  head -n 1 "$f"
}

for n in "${REMOVE[@]}"; do rm -f "$CRED/$n.password"; done
for n in "${AGENTS[@]}"; do password_of "$n" >/dev/null; done
password_of "$CP_USER" >/dev/null
mkdir -p "$DIR/members"
for m in "${MEMBERS[@]}"; do
  password_of "$CP_USER-$m" >/dev/null
  printf 'WARMPOOL_NATS_USER=%s\nWARMPOOL_NATS_PASSWORD=%s\n' "$CP_USER-$m" "$(password_of "$CP_USER-$m")" >"$DIR/members/$m.env"
done
# Members with their own user (this run's and earlier runs').
mapfile -t MEMBER_IDS < <(cd "$CRED" && ls -1 -- "$CP_USER"-*.password 2>/dev/null | sed "s/^$CP_USER-//; s/\.password\$//" | grep -E '^[0-9]+$' | sort -n)

# Every node with a password file is a user (this run's and earlier runs').
mapfile -t NODES < <(cd "$CRED" && ls -1 -- *.password 2>/dev/null | sed 's/\.password$//' | grep -vx -- "$CP_USER" | grep -vE -- "^$CP_USER-[0-9]+\$" | sort)

conf=$DIR/nats-server.conf
tmp=$(mktemp "$DIR/.nats-server.conf.XXXXXX")
{
  echo "# Generated by deploy/nats-config.sh; re-run it rather than editing by hand."
  echo "listen: \"$LISTEN\""
  echo
  echo "authorization {"
  echo "  users = ["
  echo "    # The control plane: Raft, forwards, commands to agents, their replies, events."
  echo "    {"
  echo "      user: \"$CP_USER\""
  echo "      password: \"$(password_of "$CP_USER")\""
  echo "      permissions: {"
  echo "        publish: { allow: [\"pool.v1.>\", \"_INBOX.>\"] }"
  echo "        subscribe: { allow: [\"pool.v1.>\", \"_INBOX.>\"] }"
  echo "      }"
  echo "    }"
  for m in "${MEMBER_IDS[@]}"; do
    echo "    # Control-plane member $m: its own subjects only."
    echo "    {"
    echo "      user: \"$CP_USER-$m\""
    echo "      password: \"$(password_of "$CP_USER-$m")\""
    echo "      permissions: {"
    echo "        publish: { allow: [\"pool.v1.raft.*.*\", \"pool.v1.cp.*.forward\", \"pool.v1.cp.join\", \"pool.v1.node.*.cmd\", \"pool.v1.node.*.session\", \"pool.v1.events\"] }"
    echo "        subscribe: { allow: [\"pool.v1.raft.$m.*\", \"pool.v1.cp.$m.forward\", \"pool.v1.cp.join\", \"pool.v1.node.*.heartbeat\", \"pool.v1.node.*.facts\", \"_INBOX.>\"] }"
    echo "        allow_responses: true"
    echo "      }"
    echo "    }"
  done
  for n in "${NODES[@]}"; do
    echo "    # Agent of node $n: its own subjects only."
    echo "    {"
    echo "      user: \"$n\""
    echo "      password: \"$(password_of "$n")\""
    echo "      permissions: {"
    echo "        publish: { allow: [\"pool.v1.node.$n.>\"] }"
    echo "        subscribe: { allow: [\"pool.v1.node.$n.cmd\", \"pool.v1.node.$n.session\"] }"
    echo "        allow_responses: true"
    echo "      }"
    echo "    }"
  done
  echo "  ]"
  echo "}"
} >"$tmp"
mv "$tmp" "$conf"

cat >"$DIR/control-plane.env" <<ENV
WARMPOOL_NATS_USER=$CP_USER
WARMPOOL_NATS_PASSWORD=$(password_of "$CP_USER")
ENV

echo "wrote $conf (${#NODES[@]} agent user(s): ${NODES[*]:-none}) and $DIR/control-plane.env" >&2
echo "  nats-server -c $conf" >&2
for n in "${NODES[@]}"; do
  echo "  deploy/install-agent.sh --node-id $n --nats-user $n --nats-password-file $CRED/$n.password ..." >&2
done
