# Sourced by the benchmark scripts: `bench_alone [PID...]` refuses to measure beside other
# Warmpool processes (a dev cluster, another benchmark, a test run; the PIDs given are the
# caller's own and do not count). They share the host's cores and disk, and figures measured
# beside them are theirs as much as this build's. WARMPOOL_BENCH_SHARED=1 measures anyway (the
# test suite's short forms do, running beside other tests).
bench_alone() {
  [ -n "${WARMPOOL_BENCH_SHARED:-}" ] && return 0
  local others pid
  others=$(pgrep -a -f '(^|/)(warmpool-control-plane|warmpool-agent|warmpool-gateway|fleet-sim|failover-bench) ' || true)
  for pid in "$@"; do
    others=$(printf '%s\n' "$others" | awk -v p="$pid" '$1 != p')
  done
  others=$(printf '%s\n' "$others" | sed '/^$/d')
  [ -z "$others" ] && return 0
  {
    echo "error: other Warmpool processes run on this host; figures measured beside them would not be this build's:"
    printf '%s\n' "$others" | cut -c1-150 | sed 's/^/  /'
    echo "stop them (deploy/dev.sh down, deploy/bench/cluster.sh down) or set WARMPOOL_BENCH_SHARED=1 to measure anyway"
  } >&2
  exit 1
}
