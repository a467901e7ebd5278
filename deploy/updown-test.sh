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

# What a fresh `up` must hold besides a warm pool: auth on (401 without a key; the probes
# answer without one) and NATS refusing a client without credentials.
secured() {
  local code
  code=$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:7070/v1/pools)
  [ "$code" = 401 ] || { echo "GET /v1/pools without a key answered $code, not 401"; return 1; }
  code=$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:7070/v1/health)
  [ "$code" = 200 ] || { echo "GET /v1/health without a key answered $code, not 200"; return 1; }
  python3 - <<'PY' || return 1
import socket, sys
s = socket.create_connection(("127.0.0.1", 4222), timeout=5)
f = s.makefile("rb")
f.readline()  # INFO
s.sendall(b'CONNECT {"verbose":false,"pedantic":false}\r\nPUB pool.v1.node.local.heartbeat 2\r\nhi\r\nPING\r\n')
line = f.readline().decode(errors="replace").strip()
if "Authorization Violation" not in line:
    print(f"NATS took a client without credentials: {line!r}")
    sys.exit(1)
PY
}

# A dev cluster that was not running before is not left running after: benchmarks run next
# on this machine would measure beside it.
was_up=no
curl -s -o /dev/null --max-time 2 http://127.0.0.1:7070/v1/health && was_up=yes

passed=0 failed=0
for round in 1 2 3; do
  echo "--- round $round: down, then up at once"
  start=$SECONDS
  if deploy/dev.sh down && deploy/dev.sh up >"$DEV/updown-up.log" 2>&1; then
    n=$(warm || echo 0)
    if [ "$n" -ge 3 ] && secured; then
      echo "round $round: $n warm, $((SECONDS - start)) s for down and up"
      passed=$((passed + 1))
      continue
    fi
    echo "round $round: up returned with $n warm containers in pool demo (3 wanted), or unsecured (above)"
  else
    echo "round $round failed; the end of up's output:"
    tail -20 "$DEV/updown-up.log" || true
    tail -5 "$DEV/dockerd.log" 2>/dev/null || true
  fi
  failed=$((failed + 1))
done
echo "down then up: $passed of 3 rounds ended with a warm pool"
if [ "$was_up" = no ]; then
  deploy/dev.sh down >/dev/null 2>&1 || echo "warning: deploy/dev.sh down failed after the test"
fi
[ "$failed" -eq 0 ]
