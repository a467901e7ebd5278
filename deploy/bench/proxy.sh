#!/usr/bin/env bash
# The gateway's cost against going straight to the container's IPv6 address, in one run:
# added latency (p50, p99) of GET / and the throughput of a streamed download.
#
#   deploy/bench/proxy.sh [-n REQUESTS] [--mb MIB] [--runs N] [--json]
#
# Runs target/release/proxy-bench (tests/src/bin/proxy-bench.rs): its own nats-server, one
# release member, agent and warmpool-gateway on free ports, and one allocation of the demo
# image (built if missing). Needs root, dockerd, nats-server and nft, as the tests do.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
(cd "$ROOT" && cargo build --release --bins --quiet)
export WARMPOOL_BIN_DIR="$TARGET/release"
exec "$TARGET/release/proxy-bench" "$@"
