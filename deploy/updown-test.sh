#!/usr/bin/env bash
# `deploy/dev.sh down` then `up` at once, three times: each `up` must find the processes the
# `down` before it stopped gone (dockerd included, when dev.sh started it) and end with a warm
# pool. Run by `deploy/dev.sh test` last, since it stops and starts the dev cluster.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEV="$ROOT/.dev"
cd "$ROOT"
mkdir -p "$DEV"

warm() {
  # shellcheck disable=SC1091
  (source "$DEV/env" && poolctl --output json status) |
    python3 -c 'import json,sys; s=json.load(sys.stdin); print(next((p["counts"]["warm"] for p in s["pools"] if p["name"]=="demo"),0))'
}

passed=0 failed=0
for round in 1 2 3; do
  echo "--- round $round: down, then up at once"
  start=$SECONDS
  if deploy/dev.sh down && deploy/dev.sh up >"$DEV/updown-up.log" 2>&1; then
    n=$(warm || echo 0)
    if [ "$n" -ge 3 ]; then
      echo "round $round: $n warm, $((SECONDS - start)) s for down and up"
      passed=$((passed + 1))
      continue
    fi
    echo "round $round: up returned but pool demo has $n warm containers"
  else
    echo "round $round failed; the end of up's output:"
    tail -20 "$DEV/updown-up.log" || true
    tail -5 "$DEV/dockerd.log" 2>/dev/null || true
  fi
  failed=$((failed + 1))
done
echo "down then up: $passed of 3 rounds ended with a warm pool"
[ "$failed" -eq 0 ]
