# Sourced by the benchmark scripts: `bench_rt WHAT` sets RT_PRIO to the command prefix that
# runs a process of the allocation path (members, nats-server, the load generator) under
# real-time round-robin scheduling, `chrt -r 10`, and says so on stderr naming WHAT; RT_PRIO is
# empty when WARMPOOL_BENCH_RT=0 or when the kernel refuses it here. On one host, those
# processes otherwise wait for the CPU behind Docker's work (docs/BENCHMARKS.md, "The tail was
# the CPU"). `bench_rt_pids PID...` puts running processes, every thread, where RT_PRIO would.
RT_PRIO=()
bench_rt() {
  RT_PRIO=()
  if [ "${WARMPOOL_BENCH_RT:-1}" != 1 ]; then
    echo "$1 under the normal scheduler (WARMPOOL_BENCH_RT=0)" >&2
  elif chrt -r 10 true 2>/dev/null; then
    RT_PRIO=(chrt -r 10)
    echo "$1 under SCHED_RR 10 (WARMPOOL_BENCH_RT=0 for the normal scheduler)" >&2
  else
    echo "warning: chrt -r 10 is not allowed here: $1 under the normal scheduler" >&2
  fi
}
bench_rt_pids() {
  [ ${#RT_PRIO[@]} -gt 0 ] || return 0
  local pid
  for pid in "$@"; do chrt -a -r -p 10 "$pid"; done
}
