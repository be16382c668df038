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
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT INT TERM

target/release/fanz-node cluster-init "$work/pki" --nodes 3 >/dev/null
for i in 1 2 3; do
  target/release/fanz-node --cluster-dir "$work/pki/node-$i" --node-id "n$i" \
    --http-addr "127.0.0.1:1861$i" --admin-addr "127.0.0.1:1862$i" --h3-addr off \
    --gossip-addr "127.0.0.1:1863$i" --peer-addr "127.0.0.1:1864$i" --seeds 127.0.0.1:18631 \
    --data-dir "$work/d$i" --log-level warn 2>>"$work/n$i.log" & pids+=($!)
done
for i in 1 2 3; do
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:1862$i/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
done
for _ in $(seq 100); do
  [ "$(curl -s http://127.0.0.1:18621/cluster | grep -o '"alive"' | wc -l)" = 3 ] && break; sleep 0.1
done
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
