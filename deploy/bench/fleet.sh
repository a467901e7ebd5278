#!/usr/bin/env bash
# The fleet simulator: 1,000 simulated agents (the real agent protocol over a real
# nats-server) with 100 containers each, against a real 3-member control plane; reports the
# members' memory and CPU, allocation latency with that state, snapshot size and how long a
# fourth member takes to catch up.
#
#   deploy/bench/fleet.sh [--agents N] [--containers-per-agent N] [--json FILE] [...]
#
# Any flag of target/release/fleet-sim may be given (--help lists them).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
. "$ROOT/deploy/lib/bench-alone.sh"
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
bench_alone
(cd "$ROOT" && cargo build --release --bins --quiet)
exec "$TARGET/release/fleet-sim" "$@"
