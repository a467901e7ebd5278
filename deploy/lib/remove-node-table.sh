#!/usr/bin/env bash
# Deletes the nftables table of node NODE's agent (`warmpool_<NODE>`, anything but letters and
# digits made `_`, maybe a hash after it; see node-agent/src/isolation/rules.rs). The agent
# leaves its table in place when it stops, to keep closed what may still run while it is away;
# a node taken down for good (a test's, a benchmark's, the dev cluster's) must not leave it:
# every table's chains run for every packet on the host, loopback included.
#
#   deploy/lib/remove-node-table.sh NODE
set -u
[ $# -eq 1 ] || { echo "usage: $0 NODE" >&2; exit 2; }
command -v nft >/dev/null || exit 0
clean=$(printf '%s' "$1" | tr -c 'A-Za-z0-9' '_')
for t in $(nft list tables inet 2>/dev/null | awk '{print $3}'); do
  case "$t" in
    "warmpool_$clean" | "warmpool_${clean}_"*) nft delete table inet "$t" 2>/dev/null || true ;;
  esac
done
