#!/usr/bin/env bash
# CPU time the node spends per KV request, and the rate it served: a figure that
# drifts less than req/s on a shared machine, for A/B runs of two builds.
# The node (at its defaults, given flags added) is pinned to core 1 and fanz-bench to
# core 0; 3 s of warm-up, then 5 s measured from /proc (user and system time).
#
# Usage: bench/peers/cpu_per_request.sh NODE_BINARY [node flags...]
#        (SIZE=1024 KEYS=100000 WRITES=1 to change: WRITES=1 is all PUTs;
#         KEYS=100 WRITES=0.01 is mostly hits). Everything on 127.0.0.1, stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ $# -ge 1 ] && [ -x "$1" ] || { echo "usage: $0 NODE_BINARY [node flags...]" >&2; exit 2; }
BIN=$1; shift
SIZE=${SIZE:-1024}; KEYS=${KEYS:-100000}; WRITES=${WRITES:-1}
for n in "$SIZE" "$KEYS"; do
  [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "SIZE and KEYS must be positive whole numbers" >&2; exit 2; }
done
cargo build --release -q -p fanz-bench
work=$(mktemp -d /tmp/fanz-cpu-XXXX); pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT INT TERM
# The HTTP/3 listener on, as by default (on its own port; the load does not use it).
taskset -c 1 "$BIN" --http-addr 127.0.0.1:18591 --admin-addr 127.0.0.1:18592 --h3-addr 127.0.0.1:18593 \
  --data-dir "$work/d" "$@" 2>/dev/null >/dev/null & pid=$!
for _ in $(seq 100); do curl -sf http://127.0.0.1:18592/readyz >/dev/null 2>&1 && break; sleep 0.1; done
load() {
  taskset -c 0 target/release/fanz-bench --url "http://127.0.0.1:18591/kv/{key}" --keys "$KEYS" \
    --writes "$WRITES" --value-size "$SIZE" --connections 32 --duration "$1" --warmup 0 --seed "$2" --json --label cpu
}
load 3 9 >/dev/null
u0=$(awk '{print $14}' "/proc/$pid/stat"); s0=$(awk '{print $15}' "/proc/$pid/stat")
out=$(load 5 1)
u1=$(awk '{print $14}' "/proc/$pid/stat"); s1=$(awk '{print $15}' "/proc/$pid/stat")
req=$(echo "$out" | sed -E 's/.*"requests":([0-9]+).*/\1/')
rps=$(echo "$out" | sed -E 's/.*"req_per_s":([0-9.]+).*/\1/')
ticks=$(getconf CLK_TCK)
awk -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v r="$req" -v q="$rps" -v hz="$ticks" \
  'BEGIN {k = 1e6 / hz / r; printf "%.1f us of node CPU per request (user %.1f, system %.1f), %d req/s\n", (u + s) * k, u * k, s * k, q}'
