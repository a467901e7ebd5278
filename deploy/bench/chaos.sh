#!/usr/bin/env bash
# The fault campaign in full: tests/tests/chaos.rs with several rounds of every fault (leader
# SIGKILL, a NATS node SIGKILL, all NATS down 10 s, dockerd restart on a host, agent SIGKILL
# mid-create, a member's clock 30 s ahead, a member's disk full) on 3 members, a 3-node NATS
# cluster and two hosts (network namespaces, each with its own dockerd), under an allocation
# load checked for lost and doubled allocations and orphan containers. Prints one table.
#
#   deploy/bench/chaos.sh [--rounds N]     (default 3; `deploy/dev.sh test` runs 1)
#
# Needs root, dockerd's binaries, nats-server and faketime (deploy/dev.sh test installs them).
# Release builds: the figures are the binaries' own, not a debug build's.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
ROUNDS=3
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS=$2; shift 2 ;;
    *) echo "usage: deploy/bench/chaos.sh [--rounds N]" >&2; exit 2 ;;
  esac
done
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || { echo "--rounds: a positive number" >&2; exit 2; }
cd "$ROOT"
cargo build --release --bins --quiet
report=$(mktemp)
trap 'rm -f "$report"' EXIT
# The campaign's harness is a test binary; the processes it runs are the release builds.
WARMPOOL_BIN_DIR="${CARGO_TARGET_DIR:-$ROOT/target}/release" WARMPOOL_CHAOS_ROUNDS=$ROUNDS \
  WARMPOOL_CHAOS_REPORT=$report cargo test -p warmpool-tests --test suite chaos:: -- --nocapture 2>&1 |
  grep -E '^CHAOS|^test result' || true
printf '\n%-26s %12s %5s %8s %8s %12s %12s\n' fault acknowledged lost doubled orphans 'recovery (s)' 'backoff (s)'
awk -F'\t' '{printf "%-26s %12s %5s %8s %8s %12s %12s\n", $1, $2, $3, $4, $5, $6, $7}' "$report"
