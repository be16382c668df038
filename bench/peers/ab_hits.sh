#!/usr/bin/env bash
# A/B: 1 KiB cache-hit throughput of two fanz-node binaries in front of the same
# origin, in interleaved rounds (A B A B ...), to see what a change costs on the hit
# path. Each binary is the other's peer in the same run.
#
# Usage: bench/peers/ab_hits.sh A_BINARY B_BINARY
#        (DURATION=10 CONNS=32 ROUNDS=3 LOG_LEVEL=info SIZE=1024 to change)
# Needs wrk (installs it if missing) and target/release/fanz-bench (the origin).
# Nodes run pinned to core 1, wrk to core 0, on 127.0.0.1; removed on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."
A=${1:?usage: ab_hits.sh A_BINARY B_BINARY}
B=${2:?usage: ab_hits.sh A_BINARY B_BINARY}
DURATION=${DURATION:-10}; CONNS=${CONNS:-32}; ROUNDS=${ROUNDS:-3}
LOG_LEVEL=${LOG_LEVEL:-info}; SIZE=${SIZE:-1024}
for n in "$DURATION" "$CONNS" "$ROUNDS" "$SIZE"; do
  [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "DURATION, CONNS, ROUNDS and SIZE must be positive whole numbers" >&2; exit 2; }
done
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
[ -x target/release/fanz-bench ] || cargo build --release -q -p fanz-bench

work=$(mktemp -d /tmp/fanz-ab-XXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT INT TERM

ORIGIN=127.0.0.1:18190
target/release/fanz-bench origin --addr "$ORIGIN" 2>"$work/origin.log" & pids+=($!)

# Starts binary $1 as node $2 (ports 18191+2n, 18192+2n); prints its main address.
start() {
  local http="127.0.0.1:$((18191 + 2 * $2))" admin="127.0.0.1:$((18192 + 2 * $2))"
  taskset -c 1 "$1" --origin "http://$ORIGIN" --http-addr "$http" --admin-addr "$admin" \
    --h3-addr off --data-dir "$work/data-$2" --log-level "$LOG_LEVEL" 2>>"$work/node-$2.log" & pids+=($!)
  for _ in $(seq 100); do curl -sf "http://$admin/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
  curl -sf -o /dev/null "http://$http/$SIZE/obj"; curl -sf -o /dev/null "http://$http/$SIZE/obj"
  echo "$http"
}
a=$(start "$A" 0); b=$(start "$B" 1)
echo "check: A $(curl -sI "http://$a/$SIZE/obj" | grep -i cache-status | tr -d '\r'); B $(curl -sI "http://$b/$SIZE/obj" | grep -i cache-status | tr -d '\r')"

rps() { taskset -c 0 wrk -t1 -c"$CONNS" -d"${DURATION}s" "http://$1/$SIZE/obj" | awk '/^Requests\/sec/ {print $2}'; }
sa=(); sb=()
for r in $(seq "$ROUNDS"); do
  x=$(rps "$a"); y=$(rps "$b"); sa+=("$x"); sb+=("$y")
  echo "round $r: A $x req/s, B $y req/s, B/A $(awk -v a="$x" -v b="$y" 'BEGIN {printf "%.3f", b / a}')"
done
med() { printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }
ma=$(med "${sa[@]}"); mb=$(med "${sb[@]}")
echo "median of $ROUNDS rounds (${DURATION}s, $CONNS connections, log level $LOG_LEVEL, $SIZE B): A $ma, B $mb, B/A $(awk -v a="$ma" -v b="$mb" 'BEGIN {printf "%.3f", b / a}')"
