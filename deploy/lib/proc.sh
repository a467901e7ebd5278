# Sourced by the deploy scripts that start processes in the background and stop them again.
#
# `alive PID`: whether process PID still runs. A process that has exited but is not yet reaped
# (a zombie) counts as gone: the processes `deploy/dev.sh up` and `deploy/bench/cluster.sh up`
# start outlive the script and are reaped by the machine's init, which on some hosts does so
# only every few seconds, and `kill -0` succeeds on a zombie.
alive() {
  [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null || return 1
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [ "${stat%% *}" != Z ]
}
