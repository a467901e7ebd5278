#!/usr/bin/env bash
# Builds Warmpool's demo workload image without any registry: a rootfs holding Debian's static
# busybox, tarred into `docker import`.
#
#   deploy/demo-image/build.sh [--force] [TAG]     (TAG defaults to warmpool-demo:latest)
#
# The container runs `busybox httpd` on port 8080 (IPv4 and IPv6) and serves:
#   /                   an HTML page
#   /healthz            200 "ok" (a plain file, for health checks)
#   /cgi-bin/whoami     the client's address (REMOTE_ADDR; IPv6 in brackets: [fd36:1::1]), to
#                       check source addresses
#   /cgi-bin/fail       removes /www/healthz, so later probes of /healthz get 404
#   /cgi-bin/heal       puts /www/healthz back
#   /cgi-bin/fail-until-restart
#                       like fail, but the next start of the container heals it (a fault a
#                       restart cures, for testing restart-in-place)
#   /cgi-bin/bytes?mb=N N MiB of zeros (default 1, at most 1024), streamed as they are made
#                       (no Content-Length), for streaming downloads through the gateway
# and on port 8081 a WebSocket echo (`nc -ll -e /bin/ws`: text and binary frames of up to 125
# bytes come back as they went; a close frame closes).
#
# Idempotent: an image with this tag built by this very script (same content label) is kept;
# a stale one, or any with --force, is rebuilt. Concurrent runs are serialised with flock.
set -euo pipefail

FORCE=0
TAG=warmpool-demo:latest
for arg in "$@"; do
  case "$arg" in
    --force) FORCE=1 ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    -*) echo "unknown option $arg" >&2; exit 2 ;;
    *) TAG=$arg ;;
  esac
done

BUSYBOX=${BUSYBOX:-/bin/busybox}
die() { echo "error: $*" >&2; exit 1; }
command -v docker >/dev/null || die "docker is not installed"
[ -x "$BUSYBOX" ] || die "$BUSYBOX is missing: apt-get install busybox-static"
file_is_static() { ! ldd "$1" >/dev/null 2>&1; }
file_is_static "$BUSYBOX" || die "$BUSYBOX is dynamically linked: install busybox-static"

# The content label: a hash of this script and of the busybox binary, so an image built by an
# older version of the script (or with another busybox) is rebuilt instead of silently kept.
VERSION=$(cat "$0" "$BUSYBOX" | sha256sum | cut -c1-16)

exec 9>"${TMPDIR:-/tmp}/warmpool-demo-image.lock"
flock 9

if [ "$FORCE" -eq 0 ]; then
  have=$(docker image inspect --format '{{index .Config.Labels "io.warmpool.demo.version"}}' "$TAG" 2>/dev/null || true)
  if [ "$have" = "$VERSION" ]; then
    echo "image $TAG is up to date (version $VERSION): nothing to do"
    exit 0
  fi
  [ -n "$have" ] && echo "image $TAG has version '$have', want $VERSION: rebuilding"
fi

ROOTFS=$(mktemp -d)
trap 'rm -rf "$ROOTFS"' EXIT
mkdir -p "$ROOTFS"/{bin,www/cgi-bin,tmp,etc}
chmod 1777 "$ROOTFS/tmp"
cp "$BUSYBOX" "$ROOTFS/bin/busybox"
for applet in $("$BUSYBOX" --list); do
  [ "$applet" = busybox ] || ln -s busybox "$ROOTFS/bin/$applet"
done

cat >"$ROOTFS/www/index.html" <<'HTML'
<!doctype html>
<html><head><title>warmpool demo</title></head>
<body><h1>warmpool demo</h1><p>A warm container, served by busybox httpd.</p></body></html>
HTML
printf 'ok' >"$ROOTFS/www/healthz"

cat >"$ROOTFS/www/cgi-bin/whoami" <<'SH'
#!/bin/sh
printf 'Content-Type: text/plain\r\n\r\n'
echo "$REMOTE_ADDR"
SH
cat >"$ROOTFS/www/cgi-bin/fail" <<'SH'
#!/bin/sh
rm -f /www/healthz
printf 'Content-Type: text/plain\r\n\r\n'
echo "healthz removed: health probes of /healthz now fail"
SH
cat >"$ROOTFS/www/cgi-bin/heal" <<'SH'
#!/bin/sh
printf 'ok' >/www/healthz
printf 'Content-Type: text/plain\r\n\r\n'
echo "healthz restored"
SH
cat >"$ROOTFS/www/cgi-bin/fail-until-restart" <<'SH'
#!/bin/sh
rm -f /www/healthz
touch /www/.heal-on-start
printf 'Content-Type: text/plain\r\n\r\n'
echo "healthz removed until the container restarts"
SH
cat >"$ROOTFS/www/cgi-bin/bytes" <<'SH'
#!/bin/sh
n=$(echo "$QUERY_STRING" | sed -n 's/.*mb=\([0-9][0-9]*\).*/\1/p')
[ -n "$n" ] || n=1
[ "$n" -le 1024 ] || n=1024
printf 'Content-Type: application/octet-stream\r\n\r\n'
exec dd if=/dev/zero bs=65536 count=$((n * 16)) 2>/dev/null
SH
cat >"$ROOTFS/bin/ws" <<'SH'
#!/bin/sh
# A WebSocket echo for one connection on stdin/stdout (run by `nc -ll -e`): the handshake,
# then every frame of up to 125 bytes sent back (a ping as a pong); a close frame closes.
cr=$(printf '\r')
key=
while IFS= read -r line; do
  line=${line%"$cr"}
  [ -z "$line" ] && break
  case "$line" in
    [Ss]ec-[Ww]eb[Ss]ocket-[Kk]ey:*) key=${line#*:}; key=${key# } ;;
  esac
done
if [ -z "$key" ]; then
  printf 'HTTP/1.1 400 Bad Request\r\nContent-Length: 21\r\nConnection: close\r\n\r\nWebSocket only here.\n'
  exit 0
fi
accept=$(printf '%s' "${key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11" | sha1sum | cut -c1-40 | xxd -r -p | base64)
printf 'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n' "$accept"
byte() { printf "\\$(printf '%03o' "$1")"; }
while :; do
  set -- $(dd bs=1 count=2 2>/dev/null | od -An -tu1)
  [ $# -eq 2 ] || exit 0
  op=$(($1 & 15)); len=$(($2 & 127))
  if [ "$op" -eq 8 ]; then byte 136; byte 0; exit 0; fi
  [ "$len" -le 125 ] || exit 0
  set -- $(dd bs=1 count=4 2>/dev/null | od -An -tu1)
  m0=$1 m1=$2 m2=$3 m3=$4
  out= i=0
  for b in $(dd bs=1 count="$len" 2>/dev/null | od -An -tu1 -v); do
    case $((i % 4)) in 0) k=$m0 ;; 1) k=$m1 ;; 2) k=$m2 ;; *) k=$m3 ;; esac
    out="$out\\$(printf '%03o' $((b ^ k)))"
    i=$((i + 1))
  done
  [ "$op" -eq 9 ] && op=10
  printf "\\$(printf '%03o' $((128 | op)))\\$(printf '%03o' "$len")$out"
done
SH
chmod 755 "$ROOTFS/bin/ws"
chmod 755 "$ROOTFS"/www/cgi-bin/*
# The container's command: heal a fault meant to last until a restart, then serve. (Writes
# fail harmlessly on a read-only root filesystem.)
cat >"$ROOTFS/bin/start" <<'SH'
#!/bin/sh
if [ -f /www/.heal-on-start ]; then
  printf 'ok' >/www/healthz 2>/dev/null && rm -f /www/.heal-on-start 2>/dev/null
fi
/bin/busybox nc -ll -p 8081 -e /bin/ws &
exec /bin/busybox httpd -f -p 8080 -h /www
SH
chmod 755 "$ROOTFS/bin/start"
echo 'root:x:0:0:root:/:/bin/sh' >"$ROOTFS/etc/passwd"
echo 'root:x:0:' >"$ROOTFS/etc/group"

tar -C "$ROOTFS" --owner=0 --group=0 -c . | docker import \
  -c 'CMD ["/bin/start"]' \
  -c 'EXPOSE 8080 8081' \
  -c "LABEL io.warmpool.demo.version=$VERSION" \
  - "$TAG" >/dev/null
echo "built image $TAG (version $VERSION): busybox httpd on :8080 serving /, /healthz, /cgi-bin/{whoami,fail,heal,fail-until-restart,bytes}; WebSocket echo on :8081"
