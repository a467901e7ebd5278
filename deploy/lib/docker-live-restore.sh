# Docker daemon settings Warmpool's hosts want, sourced by deploy/dev.sh and
# deploy/install-agent.sh: live restore, and (as an option) user namespace remapping.
#
# With "live-restore": true in daemon.json, containers keep running while dockerd is down (an
# upgrade, a crash, a restart): sessions on the host survive it, and the agent re-reads what
# runs when dockerd answers again. Without it, stopping dockerd stops every container.

# Merges "live-restore": true into the daemon.json at $1 (default /etc/docker/daemon.json),
# keeping every other setting; creates the file when missing; leaves a file that already says
# so untouched, and refuses (status 2, file untouched) one that is not a JSON object. Prints
# what it did.
enable_live_restore() {
  set_daemon_option "${1:-/etc/docker/daemon.json}" live-restore true \
    "containers keep running while dockerd restarts"
}

# Sets "$2": $3 (a JSON value) in the daemon.json at $1 the same way: other settings kept,
# nothing written when it already holds that value, a broken file refused untouched. $4 says
# what the setting does, for the message.
set_daemon_option() {
  python3 - "$@" <<'PY'
import json, os, sys, tempfile
path, key, value, what = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
try:
    with open(path) as f:
        text = f.read()
except FileNotFoundError:
    text = ""
try:
    conf = json.loads(text) if text.strip() else {}
except json.JSONDecodeError as e:
    print(f"{path} is not valid JSON ({e}): left as it is; add \"{key}\": {json.dumps(value)} to it by hand", file=sys.stderr)
    sys.exit(2)
if not isinstance(conf, dict):
    print(f"{path} does not hold a JSON object: left as it is; add \"{key}\": {json.dumps(value)} to it by hand", file=sys.stderr)
    sys.exit(2)
if key in conf and conf[key] == value:
    print(f"{key}: already {json.dumps(value)} in {path}")
    sys.exit(0)
conf[key] = value
folder = os.path.dirname(os.path.abspath(path))
os.makedirs(folder, exist_ok=True)
mode = os.stat(path).st_mode & 0o777 if os.path.exists(path) else 0o644
fd, tmp = tempfile.mkstemp(dir=folder, prefix=".daemon.json.")
with os.fdopen(fd, "w") as f:
    json.dump(conf, f, indent=2)
    f.write("\n")
os.chmod(tmp, mode)
os.replace(tmp, path)
print(f"{key}: set to {json.dumps(value)} in {path} ({what})")
PY
}

# The pid of the dockerd listening on the unix socket $1 (unix:///path or /path; default
# $DOCKER_HOST, else /var/run/docker.sock), read from the socket's listener, so that on a
# machine running several daemons (test hosts in network namespaces, rootless ones) it is that
# one; else its default pid file for the default socket; else the only dockerd there is.
# Prints nothing when it cannot tell.
dockerd_pid() {
  local sock=${1:-${DOCKER_HOST:-unix:///var/run/docker.sock}} pid= all
  sock=${sock#unix://}
  if command -v ss >/dev/null 2>&1; then
    pid=$(ss -xlpH 2>/dev/null | awk -v s="$sock" '$5 == s' | grep -o '"dockerd",pid=[0-9]*' \
      | head -n1 | cut -d= -f2 || true)
  fi
  if [ -z "$pid" ] && [ "$sock" = /var/run/docker.sock ] && [ -r /var/run/docker.pid ]; then
    pid=$(cat /var/run/docker.pid 2>/dev/null || true)
  fi
  if [ -z "$pid" ]; then
    all=$(pidof dockerd 2>/dev/null || true)
    case $all in *" "*) ;; *) pid=$all ;; esac
  fi
  printf '%s' "$pid"
}

# Makes a running dockerd (the one at $1, unix:///path; default $DOCKER_HOST, else the
# default socket) take live restore from its daemon.json: it is one of the settings dockerd
# reloads on SIGHUP. Waits until it reports it on. A dockerd that does not run is left alone:
# it reads the file when it starts.
reload_live_restore() {
  local host=${1:-${DOCKER_HOST:-unix:///var/run/docker.sock}} pid
  local on="docker -H $host info --format {{.LiveRestoreEnabled}}"
  if ! docker -H "$host" info >/dev/null 2>&1; then
    echo "live restore: dockerd at $host does not run now; it takes the setting when it starts"
    return 0
  fi
  [ "$($on 2>/dev/null)" = true ] && return 0
  pid=$(dockerd_pid "$host")
  if [ -z "$pid" ]; then
    echo "live restore: cannot tell which process serves $host; restart (or reload) that dockerd to turn live restore on" >&2
    return 0
  fi
  kill -HUP "$pid"
  for _ in $(seq 1 50); do
    if [ "$($on 2>/dev/null)" = true ]; then
      echo "live restore: dockerd (pid $pid) reloaded its configuration; live restore is on"
      return 0
    fi
    sleep 0.1
  done
  echo "live restore: dockerd (pid $pid) did not turn it on after a reload (see its log); restart it" >&2
}
