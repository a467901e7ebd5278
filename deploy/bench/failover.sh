#!/usr/bin/env bash
# Failover: SIGKILL the leader of a 3-member control plane under allocation load, KILLS times
# (10 by default), and time how long writes are refused each time; prints the median and p90.
#
#   deploy/bench/failover.sh [--kills N] [--clients N] [--json FILE]
#
# Runs target/release/failover-bench (tests/src/failover.rs): its own nats-server and
# release members on free ports, simulated agents (the claim is about the control plane).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
. "$ROOT/deploy/lib/bench-alone.sh"
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
bench_alone
(cd "$ROOT" && cargo build --release --bins --quiet)
exec "$TARGET/release/failover-bench" "$@"
