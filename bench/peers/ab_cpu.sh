#!/usr/bin/env bash
# A/B of two fanz-node builds' CPU time per KV request, measured side by side: both
# nodes pinned to core 1 at once, each loaded by its own fanz-bench on core 0, over
# the same seconds. On a shared machine whose speed swings from minute to minute
# (the noise that buries a 5% change when builds are run one after the other), both
# builds see the same swing, so the ratio of their CPU per request holds still.
#
# Usage: bench/peers/ab_cpu.sh A_BINARY B_BINARY [node flags...]
#        (ROUNDS=5 DURATION=5 KEYS=100000 WRITES=1 SIZE=1024 CONNS=16 to change:
#         WRITES=1 is all PUTs; KEYS=100 WRITES=0.01 is mostly hits). Nodes run at
#         their defaults (given flags added); everything on 127.0.0.1, stopped and
#         removed on exit. Prints each round and the median ratio B/A (below 1: B
#         spends less CPU per request).
set -euo pipefail
cd "$(dirname "$0")/../.."
[ $# -ge 2 ] && [ -x "$1" ] && [ -x "$2" ] || { echo "usage: $0 A_BINARY B_BINARY [node flags...]" >&2; exit 2; }
A=$1; B=$2; shift 2
ROUNDS=${ROUNDS:-5}; DURATION=${DURATION:-5}; KEYS=${KEYS:-100000}; WRITES=${WRITES:-1}
SIZE=${SIZE:-1024}; CONNS=${CONNS:-16}
for n in "$ROUNDS" "$DURATION" "$KEYS" "$SIZE" "$CONNS"; do
  [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "ROUNDS, DURATION, KEYS, SIZE and CONNS must be positive whole numbers" >&2; exit 2; }
done
cargo build --release -q -p fanz-bench
work=$(mktemp -d /tmp/fanz-abcpu-XXXX); pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT INT TERM

# Node i (0: A, 1: B) serves on 127.0.0.1:1870i, admin 1871i, HTTP/3 1872i and the
# Redis protocol 1873i (on, as by default; unused by the load; set through the
# environment, which builds from before the setting ignore), at the default log level.
start() {
  FANZ_RESP_ADDR="127.0.0.1:1873$2" taskset -c 1 "$1" --http-addr "127.0.0.1:1870$2" --admin-addr "127.0.0.1:1871$2" \
    --h3-addr "127.0.0.1:1872$2" --data-dir "$work/d$2" "${@:3}" 2>/dev/null >/dev/null &
  pids+=($!)
}
# shellcheck disable=SC2086
start "$A" 0 "$@" ${A_FLAGS:-}
# shellcheck disable=SC2086
start "$B" 1 "$@" ${B_FLAGS:-}
node_pids=("${pids[0]}" "${pids[1]}")
for i in 0 1; do
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:1871$i/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
done
load() { # node index, seconds, seed, output file
  taskset -c 0 target/release/fanz-bench --url "http://127.0.0.1:1870$1/kv/{key}" --keys "$KEYS" \
    --writes "$WRITES" --value-size "$SIZE" --connections "$CONNS" --duration "$2" --warmup 0 \
    --seed "$3" --json --label "ab$1" > "$4"
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
requests() { sed -E 's/.*"requests":([0-9]+).*/\1/' "$1"; }
hz=$(getconf CLK_TCK)

# Warm-up: both fill their stores (every key written once on average, at least).
load 0 3 9 "$work/w0" & w0=$!
load 1 3 9 "$work/w1" & w1=$!
wait "$w0" "$w1"
echo "A: $A ${A_FLAGS:-}  B: $B ${B_FLAGS:-}  ${*:-(defaults)}; $ROUNDS rounds of ${DURATION}s, $CONNS connections each, WRITES=$WRITES SIZE=$SIZE KEYS=$KEYS"
ratios=()
for r in $(seq "$ROUNDS"); do
  a0=$(cpu_ticks "${node_pids[0]}"); b0=$(cpu_ticks "${node_pids[1]}")
  load 0 "$DURATION" "$r" "$work/a" & la=$!
  load 1 "$DURATION" "$r" "$work/b" & lb=$!
  wait "$la" "$lb"
  a1=$(cpu_ticks "${node_pids[0]}"); b1=$(cpu_ticks "${node_pids[1]}")
  line=$(awk -v a="$((a1 - a0))" -v b="$((b1 - b0))" -v ra="$(requests "$work/a")" -v rb="$(requests "$work/b")" \
    -v hz="$hz" -v d="$DURATION" 'BEGIN {
      ua = a * 1e6 / hz / ra; ub = b * 1e6 / hz / rb
      printf "%.1f %.1f %d %d %.3f", ua, ub, ra / d, rb / d, ub / ua }')
  read -r ua ub qa qb ratio <<< "$line"
  ratios+=("$ratio")
  echo "round $r: A $ua us/request ($qa req/s), B $ub us/request ($qb req/s), B/A $ratio"
done
median=$(printf '%s\n' "${ratios[@]}" | sort -g | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}')
echo "median B/A CPU per request: $median"
