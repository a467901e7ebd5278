#!/usr/bin/env bash
# Fuzzes the REST API from its own OpenAPI document with schemathesis, with auth on.
#
#   deploy/fuzz-api.sh [--max-time SECONDS] [--seed N] [--keep]
#
# Starts its own single-member control plane (its own nats-server, free ports, a temporary
# data directory; binaries from ${CARGO_TARGET_DIR:-target}/debug, built when missing) with
# --auth and a bootstrap admin key, and one simulated host (warmpool-sim-agent: the agent
# protocol with containers in memory, so allocations succeed without Docker). It makes an
# admin key for the fuzzer and a warm pool the fuzzer must leave alone, then runs schemathesis
# against /v1/openapi.json: examples, coverage (boundary and invalid values), fuzzing and
# stateful (chains through links it infers, e.g. an allocation's Location) phases, positive and
# negative data, with the checks below. Then it checks on its own that
#
#   - the member still runs and answers /v1/health;
#   - its /metrics counted no 5xx but the one the design has: 503 `no_capacity` from
#     POST /v1/allocations when a pool has no warm container (fuzzed pools often have none);
#   - the pools are as they were: the pool made before the run is unchanged (same spec,
#     generation and times), and the pools the fuzzer made are deleted again.
#
# Not fuzzed: POST /v1/cluster/members (a member that does not run is given 20 s to replicate
# before it is refused: every such request would take the run's time; tests/tests/membership.rs
# covers it) and GET /v1/events/stream (a stream never ends; tests/tests/auth.rs and the
# dashboard tests cover it). The run takes about --max-time (default 120 s) plus 10 s on two cores.
# Schemathesis is installed from PyPI into a virtualenv under ${XDG_CACHE_HOME:-~/.cache}/warmpool
# (kept between runs; the first install takes about 30 s). Processes are always stopped; the
# work directory (logs, schemathesis report) is removed after a pass and kept, and named, after
# a failure or with --keep.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${WARMPOOL_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/debug}
ST_VERSION=4.32.5
VENV=${XDG_CACHE_HOME:-$HOME/.cache}/warmpool/schemathesis-$ST_VERSION
MAX_TIME=120
SEED=
KEEP=0
while [ $# -gt 0 ]; do
  case "$1" in
    --max-time) MAX_TIME=$2; shift 2 ;;
    --seed) SEED=$2; shift 2 ;;
    --keep) KEEP=1; shift ;;
    -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
    *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'fuzz-api: %s\n' "$*" >&2; exit 1; }

command -v nats-server >/dev/null || die "nats-server is not installed (apt-get install nats-server)"
command -v python3 >/dev/null || die "python3 is not installed"
command -v curl >/dev/null || die "curl is not installed"
if [ ! -x "$BIN/warmpool-control-plane" ] || [ ! -x "$BIN/warmpool-sim-agent" ]; then
  say "building the control plane and the simulated agent"
  (cd "$ROOT" && cargo build --bins --no-default-features -q)
fi

if [ ! -x "$VENV/bin/st" ] || ! "$VENV/bin/st" --version 2>/dev/null | grep -q "$ST_VERSION"; then
  say "installing schemathesis $ST_VERSION into $VENV"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "schemathesis==$ST_VERSION"
fi

WORK=$(mktemp -d -t warmpool-fuzz.XXXXXX)
NATS_PID=
CP_PID=
SIM_PID=
cleanup() {
  local status=$?
  set +e
  if [ -n "$SIM_PID" ]; then kill "$SIM_PID" 2>/dev/null; wait "$SIM_PID" 2>/dev/null; fi
  if [ -n "$CP_PID" ]; then kill "$CP_PID" 2>/dev/null; wait "$CP_PID" 2>/dev/null; fi
  if [ -n "$NATS_PID" ]; then kill "$NATS_PID" 2>/dev/null; wait "$NATS_PID" 2>/dev/null; fi
  if [ "$KEEP" = 1 ] || [ "$status" != 0 ]; then
    if [ "$status" != 0 ] && [ -f "$WORK/cp1.log" ]; then
      echo "----- control plane log (last 40 lines) -----" >&2
      tail -n 40 "$WORK/cp1.log" >&2
    fi
    echo "work directory kept: $WORK" >&2
  else
    rm -rf "$WORK"
  fi
  exit "$status"
}
trap cleanup EXIT INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
NATS_PORT=$(free_port)
API_PORT=$(free_port)
API=http://127.0.0.1:$API_PORT
ADMIN=$(python3 -c 'import secrets; print("wpk_" + secrets.token_hex(6) + "_" + secrets.token_hex(32))')
printf '%s\n' "$ADMIN" >"$WORK/admin.key"
chmod 600 "$WORK/admin.key"

say "starting nats-server on 127.0.0.1:$NATS_PORT and a control plane with --auth on $API"
nats-server -a 127.0.0.1 -p "$NATS_PORT" >"$WORK/nats.log" 2>&1 &
NATS_PID=$!
RUST_LOG=info,openraft=warn,sled=warn,async_nats=warn \
  "$BIN/warmpool-control-plane" --id 1 --bootstrap --auth --admin-key-file "$WORK/admin.key" \
  --nats-url "nats://127.0.0.1:$NATS_PORT" --api-addr "127.0.0.1:$API_PORT" \
  --data-dir "$WORK/cp1" >"$WORK/cp1.log" 2>&1 &
CP_PID=$!

call() { # method path [body] -> body on stdout; fails on a non-2xx answer
  local args=(-sS -f -X "$1" -H "Authorization: Bearer $ADMIN" "$API$2")
  [ $# -ge 3 ] && args+=(-H 'content-type: application/json' -d "$3")
  curl "${args[@]}"
}

for _ in $(seq 1 150); do
  # Ready, and the bootstrap key stored (it is written once there is a leader).
  call GET /v1/keys >/dev/null 2>&1 && break
  kill -0 "$CP_PID" 2>/dev/null || die "the control plane exited (see $WORK/cp1.log)"
  sleep 0.2
done
call GET /v1/keys >/dev/null || die "the control plane did not become ready with the admin key"

SIM_NODE=fuzz-sim-$(python3 -c 'import secrets; print(secrets.token_hex(3))')
"$BIN/warmpool-sim-agent" "nats://127.0.0.1:$NATS_PORT" "$SIM_NODE" 300 >"$WORK/sim-agent.log" 2>&1 &
SIM_PID=$!
KEEP_POOL=keep-$(python3 -c 'import secrets; print(secrets.token_hex(4))')
call POST /v1/pools "{\"name\":\"$KEEP_POOL\",\"image\":\"warmpool-demo:latest\",\"min_warm\":2}" >/dev/null
for _ in $(seq 1 150); do
  warm=$(call GET "/v1/pools/$KEEP_POOL" | python3 -c 'import json,sys; print(json.load(sys.stdin)["counts"]["warm"])')
  [ "$warm" -ge 2 ] && break
  kill -0 "$SIM_PID" 2>/dev/null || die "the simulated agent exited (see $WORK/sim-agent.log)"
  sleep 0.2
done
[ "$warm" -ge 2 ] || die "pool $KEEP_POOL did not become warm on the simulated host"
FUZZ_TOKEN=$(call POST /v1/keys '{"name":"fuzzer","role":"admin"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
ADMIN_ID=$(printf '%s' "$ADMIN" | cut -d_ -f2)
FUZZ_ID=$(printf '%s' "$FUZZ_TOKEN" | cut -d_ -f2)

pools_snapshot() { # name, generation, spec and times of every pool, sorted
  call GET /v1/pools | python3 -c '
import json, sys
pools = json.load(sys.stdin)
print(json.dumps(sorted(
    [{k: p[k] for k in ("spec", "generation", "created_at", "updated_at")} for p in pools],
    key=lambda p: p["spec"]["name"]), sort_keys=True))'
}
pools_snapshot >"$WORK/pools.before"

cat >"$WORK/schemathesis.toml" <<TOML
hooks = "$ROOT/deploy/fuzz/hooks.py"

[phases.stateful]
max-steps = 20

# 503 no_capacity is the designed answer when no container is warm (this cluster has no
# Docker host); any other 5xx, here or elsewhere, fails the run.
[[operations]]
include-operation-id = "allocations_create"
checks.not_a_server_error.expected-statuses = ["2xx", "3xx", "4xx", "503"]

TOML

say "fuzzing $API/v1/openapi.json for up to ${MAX_TIME}s (report in $WORK/report)"
st_args=(
  --config-file "$WORK/schemathesis.toml"
  run "$API/v1/openapi.json"
  -H "Authorization: Bearer $FUZZ_TOKEN"
  --phases examples,coverage,fuzzing,stateful
  --mode all
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance,negative_data_rejection,missing_required_header,unsupported_method,use_after_free_except_released_allocations,ensure_resource_availability_except_guarded,ignored_auth
  --exclude-operation-id cluster_add
  --exclude-operation-id events_stream
  --max-time "$MAX_TIME"
  --request-timeout 10
  --workers 2
  --report junit,ndjson --report-dir "$WORK/report"
)
[ -n "$SEED" ] && st_args+=(--seed "$SEED")
[ -n "${FUZZ_EXTRA:-}" ] && read -r -a extra <<<"$FUZZ_EXTRA" && st_args+=("${extra[@]}")
set +e
(cd "$WORK" && FUZZ_KEEP_POOL=$KEEP_POOL FUZZ_KEEP_KEYS="$ADMIN_ID,$FUZZ_ID" \
  "$VENV/bin/st" "${st_args[@]}")
ST_STATUS=$?
set -e

say "checking the member after the run"
failed=0
if ! kill -0 "$CP_PID" 2>/dev/null; then
  echo "FAIL: the control plane is gone (crashed?)" >&2
  failed=1
elif ! call GET /v1/health >/dev/null; then
  echo "FAIL: the control plane no longer answers /v1/health" >&2
  failed=1
fi

if [ "$failed" = 0 ]; then
  # Independent of schemathesis: what the member itself counted.
  call GET /metrics >"$WORK/metrics.txt"
  if ! python3 - "$WORK/metrics.txt" <<'PY'
import re, sys
bad = []
for line in open(sys.argv[1]):
    if not line.startswith("warmpool_http_requests_total{"):
        continue
    labels = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
    count = float(line.rsplit(" ", 1)[1])
    status = labels.get("status", "")
    if status.startswith("5") and count > 0:
        allowed = status == "503" and labels.get("method") == "POST" and labels.get("route") == "/v1/allocations"
        print(("allowed" if allowed else "FAIL") + f": {count:.0f} x {status} on {labels.get('method')} {labels.get('route')}",
              file=sys.stderr)
        if not allowed:
            bad.append(line)
sys.exit(1 if bad else 0)
PY
  then
    echo "FAIL: the member answered 5xx (see above)" >&2
    failed=1
  fi

  # Undo what the fuzzer made, then compare.
  made=$(call GET /v1/pools | python3 -c '
import json, sys
for p in json.load(sys.stdin):
    print(p["spec"]["name"])' | grep -vx "$KEEP_POOL" || true)
  n=0
  for name in $made; do
    call DELETE "/v1/pools/$name" >/dev/null || { echo "FAIL: cannot delete fuzz pool $name" >&2; failed=1; }
    n=$((n + 1))
  done
  echo "deleted $n pool(s) the fuzzer made" >&2
  pools_snapshot >"$WORK/pools.after"
  if ! cmp -s "$WORK/pools.before" "$WORK/pools.after"; then
    echo "FAIL: the pools are not as they were" >&2
    echo "before: $(cat "$WORK/pools.before")" >&2
    echo "after:  $(cat "$WORK/pools.after")" >&2
    failed=1
  fi
fi

# Schemathesis exits 1 for failures (the API's) and for errors (its own, or the document's).
# Every failure counts, and so does every error but one: CPython 3.11 raising "SystemError: AST
# constructor recursion depth mismatch" when two threads parse at once (Hypothesis describing a
# lambda in its generator; no request was involved). deploy/fuzz/hooks.py makes `ast.parse` run
# one call at a time, which ended them in our runs; one from another path would be listed here,
# not counted.
if [ "$ST_STATUS" != 0 ]; then
  if ! python3 - "$WORK/report" <<'PY'
import glob, sys
import xml.etree.ElementTree as ET

real = 0
for path in glob.glob(sys.argv[1] + "/junit-*.xml"):
    for case in ET.parse(path).getroot().iter("testcase"):
        for child in case:
            if child.tag not in ("failure", "error"):
                continue
            text = (child.attrib.get("message") or "") + (child.text or "")
            internal = child.tag == "error" and "AST constructor recursion depth mismatch" in text
            kind = "schemathesis-internal error, not counted" if internal else child.tag
            print(f"{kind}: {case.attrib.get('name')}", file=sys.stderr)
            real += not internal
sys.exit(1 if real else 0)
PY
  then
    echo "FAIL: schemathesis reported failures or errors (exit $ST_STATUS; see its summary above)" >&2
    failed=1
  fi
fi
[ "$failed" = 0 ] || exit 1
say "fuzz run passed: no 5xx but no_capacity, no crash, pools as they were"
