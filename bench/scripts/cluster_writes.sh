#!/usr/bin/env bash
# KV writes on three nodes, build against build in one run: closed-loop PUTs of 1 KiB
# values over 1 000 keys at n1 (so two thirds of them go to another owner too), with
# fanz-bench. Every write waits until each member has dropped older copies of its key
# (or is fenced): RELIABILITY finding 15.
#
# Usage: bench/scripts/cluster_writes.sh [OLD_BIN [NEW_BIN]]
#        (ROUNDS=3 DURATION=5 CONNS=16 to change; NEW_BIN defaults to this tree's
#        release build; without OLD_BIN, only NEW_BIN is measured)
# Three fanz-node processes per build on 127.0.0.1, one build at a time, alternating;
# everything is stopped and removed on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-3}; DURATION=${DURATION:-5}; CONNS=${CONNS:-16}
for v in ROUNDS DURATION CONNS; do
  [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || { echo "$v must be a positive whole number" >&2; exit 2; }
done
cargo build --release -q -p fanz-node -p fanz-bench
old=${1:-}; new=${2:-target/release/fanz-node}
builds=("$new"); [ -n "$old" ] && builds=("$old" "$new")
for b in "${builds[@]}"; do [ -x "$b" ] || { echo "$b is not an executable" >&2; exit 2; }; done
work=$(mktemp -d /tmp/fanz-writes-XXXX)
pids=()
source bench/scripts/cluster_lib.sh
cleanup() { cluster_stop; rm -rf "$work"; }
trap cleanup EXIT INT TERM

field() { echo "$1" | sed -E "s/.*\"$2\":([0-9.]+).*/\\1/"; }
printf '%-6s %-40s %10s %8s %8s\n' round build req_per_s p50_ms p99_ms
for round in $(seq "$ROUNDS"); do
  for b in "${builds[@]}"; do
    dir="$work/r$round-$(basename "$b")"; mkdir -p "$dir"
    cluster_start "$b" "$dir" 187
    out=$(target/release/fanz-bench --protocol h1 --url "http://127.0.0.1:18711/kv/{key}" \
      --keys 1000 --writes 1 --connections "$CONNS" --duration "$DURATION" --warmup 1 --json)
    cluster_stop
    printf '%-6s %-40s %10.0f %8.3f %8.3f\n' "$round" "$b" "$(field "$out" req_per_s)" \
      "$(field "$out" p50_ms)" "$(field "$out" p99_ms)"
  done
done
