#!/usr/bin/env bash
# The dashboard's tests, from a fresh Debian machine to a verdict in a few minutes.
#
#   deploy/dashboard-test.sh            install what is missing, build, run Vitest, then the
#                                       browser tests (Chromium against a live local cluster)
#   deploy/dashboard-test.sh --unit     Vitest only (no browser, no cluster)
#   deploy/dashboard-test.sh --browser  the browser tests only, on what `--unit` installed and
#                                       built (deploy/dev.sh test runs `--unit` beside its build)
#
# It installs: the npm packages (`npm ci`, from dashboard/package-lock.json), Debian's
# chromium, and, for the cluster the browser tests start, what `deploy/dev.sh` also needs
# (nats-server, docker.io, busybox-static for the demo image). It starts dockerd when
# `docker info` fails (and stops it again at the end), builds the Rust binaries
# (`cargo build --bins`; set WARMPOOL_SKIP_CARGO_BUILD=1 when the caller just did) and the
# demo image. Node.js 20.19 or newer must be on PATH (Debian 12's own nodejs is too old for
# Vite 8).
#
# The browser tests start their own nats-server, control-plane members and agent on free
# ports with their own data directory, and remove everything they made, also when they fail.
# Screenshots land in dashboard/screenshots/latest/.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DASH="$ROOT/dashboard"
say() { printf '\033[1m==>\033[0m %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
UNIT_ONLY=0 BROWSER_ONLY=0
case "${1:-}" in
  --unit) UNIT_ONLY=1 ;;
  --browser) BROWSER_ONLY=1 ;;
  "") ;;
  *) die "usage: deploy/dashboard-test.sh [--unit|--browser]" ;;
esac

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else die "need root for: $*"; fi
}
apt_install() {
  say "installing $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# Node.js: Vite 8 needs 20.19+ (or 22.12+).
command -v node >/dev/null || die "node is missing: install Node.js 20.19 or newer"
node -e '
  const [a, b] = process.versions.node.split(".").map(Number);
  if (!((a === 20 && b >= 19) || (a === 22 && b >= 12) || a > 22)) {
    console.error(`Node.js ${process.versions.node} is too old for Vite 8: 20.19+ or 22.12+ is needed`);
    process.exit(1);
  }' || exit 1

if [ "$BROWSER_ONLY" -eq 1 ]; then
  [ -d "$DASH/node_modules" ] && [ -f "$DASH/dist/index.html" ] ||
    die "--browser needs the npm packages and the built dashboard: run deploy/dashboard-test.sh --unit first"
else
  say "installing npm packages (npm ci)"
  (cd "$DASH" && npm ci --no-audit --no-fund --loglevel=error)

  say "building the dashboard (vite build)"
  (cd "$DASH" && npx vite build --logLevel warn)

  say "unit tests (vitest)"
  (cd "$DASH" && npx vitest run)
fi

if [ "$UNIT_ONLY" -eq 1 ]; then exit 0; fi

# --- browser tests: Chromium and a live cluster ---------------------------------------------
pkgs=()
[ -x "${CHROMIUM:-/usr/bin/chromium}" ] || pkgs+=(chromium)
command -v nats-server >/dev/null || pkgs+=(nats-server)
command -v dockerd >/dev/null || pkgs+=(docker.io)
dpkg -s busybox-static >/dev/null 2>&1 || pkgs+=(busybox-static)
command -v iptables >/dev/null || pkgs+=(iptables)
if [ ${#pkgs[@]} -gt 0 ]; then apt_install "${pkgs[@]}"; fi

STARTED_DOCKERD=
LOGDIR=$(mktemp -d)
cleanup() {
  if [ -n "$STARTED_DOCKERD" ]; then
    say "stopping the dockerd this script started"
    as_root kill "$STARTED_DOCKERD" 2>/dev/null || true
  fi
  rm -rf "$LOGDIR"
}
trap cleanup EXIT
if ! docker info >/dev/null 2>&1; then
  say "starting dockerd"
  as_root sh -c "nohup dockerd >'$LOGDIR/dockerd.log' 2>&1 & echo \$! >'$LOGDIR/dockerd.pid'"
  STARTED_DOCKERD=$(cat "$LOGDIR/dockerd.pid")
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  docker info >/dev/null 2>&1 || { tail -20 "$LOGDIR/dockerd.log" >&2; die "dockerd did not come up"; }
fi

if [ "${WARMPOOL_SKIP_CARGO_BUILD:-0}" != 1 ]; then
  command -v cargo >/dev/null || die "cargo is missing: install Rust (https://rustup.rs)"
  say "building the control plane and agent (cargo build --bins --no-default-features)"
  (cd "$ROOT" && cargo build --bins --no-default-features --quiet)
fi
"$ROOT/deploy/demo-image/build.sh" warmpool-demo:latest >&2

say "browser tests (playwright-core + $(${CHROMIUM:-/usr/bin/chromium} --version 2>/dev/null | head -1))"
(cd "$DASH" && node --test --test-concurrency=1 --test-reporter=spec tests/browser/dashboard.test.mjs)
