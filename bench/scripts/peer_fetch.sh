#!/usr/bin/env bash
# What a peer fetch costs: KV GETs of one 1 KiB key at a node that owns it (a local
# hit) and at a node that does not (every GET is fetched from the owner over the
# peer protocol: QUIC, mutual TLS), in one run, with fanz-bench (closed loop).
#
# Usage: bench/scripts/peer_fetch.sh      (DURATION=5 CONNS=16 to change)
# Three fanz-node processes on 127.0.0.1; everything is stopped and removed on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION=${DURATION:-5}; CONNS=${CONNS:-16}
if ! [[ "$DURATION" =~ ^[1-9][0-9]*$ && "$CONNS" =~ ^[1-9][0-9]*$ ]]; then
  echo "DURATION and CONNS must be positive whole numbers" >&2; exit 2
fi
cargo build --release -q -p fanz-node -p fanz-bench
work=$(mktemp -d /tmp/fanz-peer-XXXX)
pids=()
source bench/scripts/cluster_lib.sh
cleanup() { cluster_stop; rm -rf "$work"; }
trap cleanup EXIT INT TERM

cluster_start target/release/fanz-node "$work" 186
head -c 1024 /dev/urandom > "$work/value"
curl -sf -X PUT --data-binary @"$work/value" http://127.0.0.1:18611/kv/bench >/dev/null
owner=""; other=""
for i in 1 2 3; do
  status=$(curl -s -D- -o /dev/null "http://127.0.0.1:1861$i/kv/bench" | tr -d '\r' | grep -i '^cache-status' || true)
  case "$status" in *key=*) other=$i ;; *hit*) owner=$i ;; esac
done
[ -n "$owner" ] && [ -n "$other" ] || { echo "could not tell the owner from the other node" >&2; exit 1; }
run() {
  target/release/fanz-bench --protocol h1 --url "http://127.0.0.1:1861$1/kv/bench" \
    --connections "$CONNS" --duration "$DURATION" --warmup 1 --json
}
# CPU time of the three nodes together (clock ticks), around each run: what a
# request costs the cluster, whatever the machine's noise does to throughput.
node_ticks() { local t=0; for p in "${pids[@]}"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo "$t"; }
tick=$(getconf CLK_TCK)
t0=$(node_ticks); local_hit=$(run "$owner"); t1=$(node_ticks); peer=$(run "$other"); t2=$(node_ticks)
field() { echo "$1" | sed -E "s/.*\"$2\":([0-9.]+).*/\\1/"; }
echo "local hit (n$owner):  $local_hit"
echo "peer fetch (n$other): $peer"
# Requests in the warm-up second are counted at the measured rate.
cpu_us() { echo "$1 $2 $tick $DURATION" | awk '{printf "%.1f", $1 / $3 * 1e6 / ($2 * ($4 + 1))}'; }
printf '%-12s %10s %8s %8s %22s\n' path req_per_s p50_ms p99_ms "node CPU us/request"
printf '%-12s %10.0f %8.3f %8.3f %22s\n' "local hit" "$(field "$local_hit" req_per_s)" "$(field "$local_hit" p50_ms)" "$(field "$local_hit" p99_ms)" "$(cpu_us $((t1 - t0)) "$(field "$local_hit" req_per_s)")"
printf '%-12s %10.0f %8.3f %8.3f %22s\n' "peer fetch" "$(field "$peer" req_per_s)" "$(field "$peer" p50_ms)" "$(field "$peer" p99_ms)" "$(cpu_us $((t2 - t1)) "$(field "$peer" req_per_s)")"
