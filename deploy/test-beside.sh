#!/usr/bin/env bash
# The tests that are not cargo's, one after another: the dashboard's (Vitest, then Chromium
# against a live cluster), the Python SDK's (pytest against a live cluster) and the API fuzz
# run (schemathesis against a member with a simulated host). Each starts its own nats-server,
# members and agent on free ports with their own /64 and labels, so `deploy/dev.sh test` runs
# this beside the cargo test binaries (deploy/test-cargo.sh, WARMPOOL_TEST_BESIDE), which
# spend most of their time waiting for Docker, not on the CPU.
#
# Each part's output goes to its own log in $1 (a directory); a line per part on stdout, and
# a failing part's log whole on stderr. The exit status is 1 when any part failed.
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LOGS=${1:?usage: deploy/test-beside.sh LOG_DIR}
mkdir -p "$LOGS"
failed=0
part() {
  local name=$1 start=$SECONDS rc=0
  shift
  "$@" >"$LOGS/$name.log" 2>&1 </dev/null || rc=$?
  if [ "$rc" -eq 0 ]; then
    printf '  ok    %-42s %4ss\n' "$name" "$((SECONDS - start))"
  else
    printf '  FAIL  %-42s %4ss  (exit %s)\n' "$name" "$((SECONDS - start))" "$rc"
    echo "===== $name =====" >&2
    cat "$LOGS/$name.log" >&2
    failed=1
  fi
}
export WARMPOOL_SKIP_CARGO_BUILD=1
part dashboard "$ROOT/deploy/dashboard-test.sh"
part sdk "$ROOT/deploy/sdk-test.sh"
part fuzz-api "$ROOT/deploy/fuzz-api.sh"
exit "$failed"
