#!/usr/bin/env bash
# Runs every cargo test binary of the workspace, several at once.
#
# `cargo test` runs its test binaries one after another, and most of ours spend their time
# waiting (for containers to start, a leader to be elected, a lease to run out), not on the CPU.
# So this builds them all, then runs up to $WARMPOOL_TEST_JOBS binaries at a time (default 3),
# each with its own log; a failing binary's log is printed whole. The whole-system suite
# (tests/tests/suite.rs) is one binary, run once a module (`cluster`, `policy`, ...), each
# process given its module's tests by name: it counts here as a binary a module. The tests whose assertions
# compare timings taken on this host (the burst test compares a live run with the simulator;
# the paused tier's burst must be served without waiting) run afterwards, alone.
#
# Usage: deploy/test-cargo.sh [extra args for every test binary, e.g. a name filter]
# With arguments, the suite runs whole, as one binary, after the rest.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
JOBS="${WARMPOOL_TEST_JOBS:-3}"
# Run alone, after the rest: their assertions compare timings taken on this host. An entry is a
# test binary or a module of the suite, or BINARY/TEST for one test of it (its other tests run
# with the rest).
ALONE=(policy/a_burst_is_served_the_pool_grows_then_shrinks_back_and_simulate_agrees paused_tier)
# The longest binaries start first, so the last ones to finish are short.
FIRST=(multi_host chaos cluster single_host agent nats_outage dockerd_restart isolation)

# $WARMPOOL_TOGETHER_DONE, when set, is a file made once the binaries run together are done (or
# this script ends early): `deploy/dev.sh test` starts its API fuzzer, at the lowest priority,
# when it appears.
together_done() { [ -z "${WARMPOOL_TOGETHER_DONE:-}" ] || touch "$WARMPOOL_TOGETHER_DONE"; }
trap together_done EXIT

LOGS="$(mktemp -d "${TMPDIR:-/tmp}/warmpool-tests.XXXXXX")"
LIST="$LOGS/binaries"
# What the tests' clean-up could not remove, and Docker's reason (tests/src/lib.rs), printed at
# the end: a passing test's own output is not shown.
export WARMPOOL_CLEANUP_LOG="$LOGS/cleanup.txt"
cargo test --workspace --no-default-features --no-run --message-format=json 2>"$LOGS/build.err" |
  python3 -c '
import json, os, subprocess, sys
filtered = sys.argv[1] != "0"
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") != "compiler-artifact" or not m.get("profile", {}).get("test"):
        continue
    if not m.get("executable"):
        continue
    t = m["target"]
    package = os.path.basename(os.path.dirname(m["manifest_path"]))
    label = package + "/" + ("unit" if t["kind"][0] in ("lib", "bin") else t["name"])
    if t["kind"][0] == "bin":
        label += ":" + t["name"]
    row = [label, t["name"], os.path.dirname(m["manifest_path"]), m["executable"]]
    if t["name"] != "suite" or filtered:
        print("\t".join(row))
        continue
    # The whole-system suite: one group a module, each run as a binary of its own.
    listed = subprocess.run([m["executable"], "--list", "--format", "terse"], capture_output=True, text=True, check=True)
    groups = {}
    for test in listed.stdout.splitlines():
        name, _, kind = test.rpartition(": ")
        if kind == "test" and "::" in name:
            groups.setdefault(name.split("::")[0], []).append(name)
    for module, names in sorted(groups.items()):
        print("\t".join([package + "/" + module, module] + row[2:] + [" ".join(names)]))
' "$#" >"$LIST" || { cat "$LOGS/build.err" >&2; exit 1; }
[ -s "$LIST" ] || { cat "$LOGS/build.err" >&2; echo "no test binaries built" >&2; exit 1; }

# One binary: its log in $LOGS, a line on stdout; exit status its own.
run_one() {
  local label="$1" dir="$2" exe="$3"
  shift 3
  local log="$LOGS/${label//\//_}.log" start=$SECONDS rc=0
  # Each binary runs from its package's directory, as `cargo test` runs it.
  (cd "$dir" && CARGO_MANIFEST_DIR="$dir" "$exe" "$@") >"$log" 2>&1 || rc=$?
  local summary
  summary="$(grep -E '^test result:' "$log" | tail -1 | sed 's/^test result: //; s/; finished in.*//')"
  if [ "$rc" -eq 0 ]; then
    printf '  ok    %-42s %4ss  %s\n' "$label" "$((SECONDS - start))" "$summary"
  else
    printf '  FAIL  %-42s %4ss  (exit %s) %s\n' "$label" "$((SECONDS - start))" "$rc" "$summary"
  fi
  return "$rc"
}
export -f run_one
export LOGS ROOT

# Its arguments joined by tabs (an entry's fields).
tabbed() { local IFS=$'\t'; echo "$*"; }

# The tests of binary (or suite module) $1 named to run alone: "*" for all of them, else one name a line.
alone_tests() {
  local a
  for a in "${ALONE[@]}"; do
    if [ "$a" = "$1" ]; then echo '*'; elif [ "${a%%/*}" = "$1" ]; then echo "${a#*/}"; fi
  done
}

# Entries: label, directory, executable, then the binary's own arguments (tab-separated).
first=() together=() alone=() ordered=()
while IFS=$'\t' read -r label target dir exe names; do
  entry="$label"$'\t'"$dir"$'\t'"$exe"
  mapfile -t lone < <(alone_tests "$target")
  if [ -n "$names" ]; then
    # A module of the suite: its tests by name, exactly; those named to run alone apart.
    read -r -a group <<<"$names"
    if [ "${lone[0]:-}" = '*' ]; then
      alone+=("$entry"$'\t'"$(tabbed "${group[@]}")"$'\t'--exact)
      continue
    fi
    rest=()
    for n in "${group[@]}"; do
      if printf '%s\n' "${lone[@]}" | grep -qxF "${n#*::}"; then
        alone+=("$label/${n#*::}"$'\t'"$dir"$'\t'"$exe"$'\t'"$n"$'\t'--exact)
      else
        rest+=("$n")
      fi
    done
    [ "${#rest[@]}" -gt 0 ] || continue
    entry+=$'\t'"$(tabbed "${rest[@]}")"$'\t'--exact
  elif [ "$target" = suite ]; then
    # The suite whole, with the filter given (it may or may not select tests named to run alone).
    alone+=("$entry")
    continue
  else
    if [ "${#lone[@]}" -gt 0 ] && { [ "${lone[0]}" = '*' ] || [ $# -gt 0 ]; }; then
      # Whole, alone (also when a filter was given: it may or may not select the named tests).
      alone+=("$entry")
      continue
    elif [ "${#lone[@]}" -gt 0 ]; then
      skips=""
      for n in "${lone[@]}"; do
        alone+=("$label/$n"$'\t'"$dir"$'\t'"$exe"$'\t'"$n"$'\t'--exact)
        skips+=$'\t'"--skip"$'\t'"$n"
      done
      entry+="$skips"
      # Exact: --skip otherwise drops every test whose name contains it.
      entry+=$'\t'--exact
    fi
  fi
  if [[ " ${FIRST[*]} " == *" $target "* ]]; then
    first+=("$target"$'\t'"$entry")
  else
    together+=("$entry")
  fi
done <"$LIST"
# The first ones in the order FIRST names them.
ordered=()
for name in "${FIRST[@]}"; do
  for e in "${first[@]}"; do
    [ "${e%%$'\t'*}" != "$name" ] || ordered+=("${e#*$'\t'}")
  done
done
together=("${ordered[@]}" "${together[@]}")

started=$SECONDS
failed=0
echo "running ${#together[@]} test binaries, $JOBS at a time (logs in $LOGS)"
printf '%s\n' "${together[@]}" |
  xargs -P "$JOBS" -d '\n' -I{} bash -c 'IFS=$'"'"'\t'"'"' read -r -a f <<<"$0"; run_one "${f[@]}" "$@"' {} "$@" ||
  failed=1
# Documentation examples, when a doc comment has one (built now: compiling is no load for the
# tests run alone). Only then: rustdoc reads every library crate to find them, which takes half
# a minute here, and this workspace documents with `text` and `sh` blocks, not tests.
mapfile -d '' sources < <(find "$ROOT"/*/src -name '*.rs' -print0)
if awk -f "$ROOT/deploy/doc-examples.awk" "${sources[@]}"; then
  cargo test --workspace --no-default-features --doc --quiet >"$LOGS/doc.log" 2>&1 || { cat "$LOGS/doc.log" >&2; failed=1; }
fi
together_done
if [ "${#alone[@]}" -gt 0 ]; then
  echo "running ${#alone[@]} timing-sensitive tests alone"
  for entry in "${alone[@]}"; do
    IFS=$'\t' read -r -a f <<<"$entry"
    run_one "${f[@]}" "$@" || failed=1
  done
fi
echo "cargo tests took $((SECONDS - started)) s"
if [ -s "$WARMPOOL_CLEANUP_LOG" ]; then
  echo "left behind by the tests' clean-up:"
  cat "$WARMPOOL_CLEANUP_LOG"
fi

if [ "$failed" -ne 0 ]; then
  for log in "$LOGS"/*.log; do
    if ! grep -qE '^test result: ok' "$log"; then
      echo "===== $(basename "$log" .log) =====" >&2
      cat "$log" >&2
    fi
  done
  exit 1
fi
